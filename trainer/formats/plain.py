"""'Name: text' lines, for models without role tokens (the Falcon chatbot tutorial)."""
from __future__ import annotations

from trainer.data.conversation import Turn
from trainer.formats.base import PromptFormat, Segment, turn_text


class PlainFormat(PromptFormat):
    """`[persona\\n]User: q\\nAssistant: a\\nUser: q2\\nAssistant: a2\\n`. The prompt block is the user line plus
    `"\\n{bot}: "` (trailing space), so every generation prompt, the first one included, ends that way, as the
    tutorial's `"\\n".join(lines) + f"\\n{bot}: "` does. Trained: the reply text and its terminating newline,
    which is also the chat's stop string (a reply containing a newline is cut there at chat time). The persona
    line is the system prefix; the speaker names are `plain_user_name` and `plain_bot_name`.
    """

    name = "plain"
    option_keys = ("plain_user_name", "plain_bot_name")
    end_key = "\n"

    def __init__(self, eos: str, bos: str | None, system: str | None, plain_user_name: str = "User",
                 plain_bot_name: str = "Assistant"):
        super().__init__(eos, bos, system, plain_user_name=plain_user_name, plain_bot_name=plain_bot_name)
        self.user = plain_user_name
        self.bot = plain_bot_name
        self.assistant_cue = f"{plain_bot_name}: "
        self._newline = Segment("\n", True)

    def header(self, first: Turn, system: str | None) -> list[Segment]:
        return [] if system is None else [Segment(system + "\n", False)]

    def prompt(self, turn: Turn, index: int) -> list[Segment]:
        return [Segment(f"{self.user}: {turn_text(turn)}\n{self.assistant_cue}", False)]

    def reply(self, turn: Turn) -> list[Segment]:
        return [Segment(turn.text, True), self._newline]
