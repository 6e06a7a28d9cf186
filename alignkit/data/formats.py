"""Dataset formats: recognising a source's format from its columns, and normalising its rows.

Every accepted format becomes one of four shapes the rest of the data layer works with:

    conversation       messages: [{role, content}, ...]         (messages, ShareGPT)
    prompt-completion  prompt, completion: strings or messages  (prompt/completion, Alpaca)
    text               text: a string                           (plain text, cpt)
    preference         prompt, chosen, rejected: messages       (explicit prompt, or full conversations)
    unpaired           prompt, completion: strings or messages, label: desirable or not (KTO-style data)
    prompt             prompt: messages (a prompt column, or a conversation minus its final assistant turn)

A format is named in the logs and the report, so a user sees how each source was read. Row problems raise
`RowError` (a plain ValueError, picklable across worker processes); the caller adds the source's name.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from alignkit.methods.method import Method

MESSAGES = "messages"
SHAREGPT = "sharegpt"
ALPACA = "alpaca"
PROMPT_COMPLETION = "prompt-completion"
TEXT = "text"
PREFERENCE = "preference"
PREFERENCE_IMPLICIT = "preference-conversations"
UNPAIRED = "unpaired"
PROMPT = "prompt"
TEMPLATE_CONTEXT = ("tools", "chat_template_kwargs")
"""Columns the chat template reads beside the messages; never training text themselves."""

DESCRIPTIONS = {
    MESSAGES: "messages (a list of {role, content})",
    SHAREGPT: "conversations (ShareGPT: a list of {from, value}, from human/gpt/system)",
    ALPACA: "instruction + output (+ input) (Alpaca)",
    PROMPT_COMPLETION: "prompt + completion (strings or message lists)",
    TEXT: "text",
    PREFERENCE: "prompt + chosen + rejected (strings or message lists)",
    PREFERENCE_IMPLICIT: "chosen + rejected full conversations (the shared beginning becomes the prompt)",
    UNPAIRED: "prompt + completion (strings or message lists) + label (true: desirable, false: undesirable)",
    PROMPT: "prompt (a string or a message list), or a conversation (messages, ShareGPT) minus its final assistant"
    " turn",
}

SHAREGPT_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "chatgpt": "assistant",
    "bard": "assistant",
    "bing": "assistant",
    "model": "assistant",
    "system": "system",
    "tool": "tool",
    "function": "tool",
    "observation": "tool",
}


ROLES = ("system", "user", "assistant", "tool", "developer", "ipython")
"""The message roles chat templates know (after the ShareGPT and Gemma names are mapped onto them)."""


class RowError(ValueError):
    """A row that does not have the shape its format needs."""


@dataclass(frozen=True)
class Detected:
    """A source's format and the columns it reads."""

    format: str
    columns: tuple[str, ...]

    @property
    def shape(self) -> str:
        if self.format in (MESSAGES, SHAREGPT):
            return "conversation"
        if self.format in (PROMPT_COMPLETION, ALPACA):
            return "prompt-completion"
        if self.format in (PREFERENCE, PREFERENCE_IMPLICIT):
            return "preference"
        if self.format == UNPAIRED:
            return "unpaired"
        if self.format == PROMPT:
            return "prompt"
        return "text"


def detect(
    columns: list[str],
    first_row: dict[str, Any] | None,
    method: Method,
    text_column: str = "text",
    prompt_column: str | None = None,
) -> Detected:
    """The format of a source with these columns, among those `method` accepts (in its order of preference);
    a `prompt_column` the recipe names is the prompt, whatever else the rows hold.

    Raises:
        ValueError: naming the columns found and the formats `method` accepts.
    """
    found = set(columns)
    needs = method.data
    if prompt_column is not None:
        if prompt_column not in found:
            listed = ", ".join(sorted(found)) or "none"
            raise ValueError(
                f"{method.name}.{needs.prompt_column_field} names column {prompt_column!r}, which this source does"
                f" not have (its columns: {listed}); name one of them, or unset it to detect the format"
            )
        return Detected(PROMPT, (prompt_column,))
    if needs.text_column_field:
        candidates = [Detected(TEXT, (text_column,))] if text_column in found else []
    else:
        candidates = _candidates(found, first_row)
    for wanted in needs.formats:
        for candidate in candidates:
            if candidate.format == wanted:
                context = tuple(c for c in TEMPLATE_CONTEXT if c in found)
                if context and candidate.format != TEXT:  # inputs of the chat template beside the messages
                    return Detected(candidate.format, (*candidate.columns, *context))
                return candidate
    raise ValueError(_no_format_fits(columns, candidates, method, text_column))


def _candidates(found: set[str], first_row: dict[str, Any] | None) -> list[Detected]:
    """Every format whose columns are present, most specific first."""
    candidates = []
    if "messages" in found:
        candidates.append(Detected(MESSAGES, ("messages",)))
    if "conversations" in found:
        sample = (first_row or {}).get("conversations")
        is_sharegpt = not sample or (isinstance(sample[0], dict) and "from" in sample[0])
        candidates.append(Detected(SHAREGPT if is_sharegpt else MESSAGES, ("conversations",)))
    if {"prompt", "completion", "label"} <= found:  # before prompt-completion: the label is what it adds
        candidates.append(Detected(UNPAIRED, ("prompt", "completion", "label")))
    if {"prompt", "completion"} <= found:
        candidates.append(Detected(PROMPT_COMPLETION, ("prompt", "completion")))
    if {"instruction", "output"} <= found:
        extra = tuple(c for c in ("input", "system") if c in found)
        candidates.append(Detected(ALPACA, ("instruction", *extra, "output")))
    if {"chosen", "rejected"} <= found:
        if "prompt" in found:
            candidates.append(Detected(PREFERENCE, ("prompt", "chosen", "rejected")))
        else:
            candidates.append(Detected(PREFERENCE_IMPLICIT, ("chosen", "rejected")))
    if "text" in found:
        candidates.append(Detected(TEXT, ("text",)))
    if "prompt" in found:  # last: a prompt beside completions or responses is read as their data first
        candidates.append(Detected(PROMPT, ("prompt",)))
    return candidates


def _no_format_fits(columns: list[str], candidates: list[Detected], method: Method, text_column: str) -> str:
    """What was found, what `method` accepts, and which methods would take the data as it is."""
    from alignkit.errors import either
    from alignkit.methods import METHODS

    field = method.data.text_column_field
    if field:
        accepted = f"a text column named {text_column!r} ({method.name}.{field})"
    else:
        accepted = "; ".join(DESCRIPTIONS[f] for f in method.data.formats)
    shown = ", ".join(columns) if columns else "none"
    hint = ""
    if candidates:
        found = candidates[0]
        fitting = [m.name for m in METHODS.values() if found.format in m.data.formats and not m.data.text_column_field]
        if fitting:
            hint = f"; this is {found.shape if found.shape == 'preference' else found.format} data: train it with"
            hint += f" {either(fitting)}"
            if PREFERENCE in method.data.formats:
                hint += ", or give chosen and rejected columns"
    return f"columns found: {shown}; {method.name} accepts {accepted}{hint}"


def messages_of(value: Any, column: str) -> list[dict[str, str]]:
    """A validated list of {role, content} messages (content parts of type text are joined)."""
    if not isinstance(value, list):
        raise RowError(f"{column} must be a list of messages, got {type(value).__name__}")
    out = []
    for position, message in enumerate(value):
        if not isinstance(message, dict) or "role" not in message or "content" not in message:
            keys = sorted(message) if isinstance(message, dict) else type(message).__name__
            raise RowError(f"{column}[{position}] needs role and content (found {keys})")
        role = message["role"]
        if not isinstance(role, str) or not role:
            raise RowError(f"{column}[{position}].role must be a non-empty string (found {role!r})")
        # ShareGPT and Gemma names (human, gpt, model) are common in role/content data too; developer and
        # ipython pass through for the templates that know them. Any other role no template renders as meant.
        role = SHAREGPT_ROLES.get(role.strip().lower(), role)
        if role not in ROLES:
            raise RowError(f"{column}[{position}].role is {message['role']!r}; use one of {', '.join(ROLES)}")
        # Other keys (tool_calls, name, ...) stay: templates that know them render them.
        extra = {k: v for k, v in message.items() if v is not None and k not in ("role", "content")}
        where = f"{column}[{position}].content"
        if message["content"] is None and "tool_calls" not in extra:  # a tool call's turn may have no text
            raise RowError(f"{where} is null; give the message's text (an empty string for an empty turn)")
        out.append({**extra, "role": role, "content": _content(message["content"], where)})
    return out


def sharegpt_messages(value: Any, column: str = "conversations") -> list[dict[str, str]]:
    """ShareGPT turns ({from, value}) as {role, content} messages."""
    if not isinstance(value, list):
        raise RowError(f"{column} must be a list of turns, got {type(value).__name__}")
    out = []
    for position, turn in enumerate(value):
        if not isinstance(turn, dict) or "from" not in turn or "value" not in turn:
            keys = sorted(turn) if isinstance(turn, dict) else type(turn).__name__
            raise RowError(f"{column}[{position}] needs from and value (found {keys})")
        tag = str(turn["from"]).strip().lower()
        if tag not in SHAREGPT_ROLES:
            raise RowError(
                f"{column}[{position}].from is {turn['from']!r}; ShareGPT roles are {', '.join(SHAREGPT_ROLES)}"
            )
        where = f"{column}[{position}].value"
        if turn["value"] is None:
            raise RowError(f"{where} is null; give the turn's text (an empty string for an empty turn)")
        out.append({"role": SHAREGPT_ROLES[tag], "content": _content(turn["value"], where)})
    return out


def template_context(row: dict[str, Any], detected: Detected) -> dict[str, Any] | None:
    """The row's chat-template inputs besides its messages: tool schemas and `chat_template_kwargs`."""
    context: dict[str, Any] = {}
    if "tools" in detected.columns:
        tools = _json_field(row.get("tools"), "tools")
        if tools is not None and not isinstance(tools, list):
            raise RowError(f"tools must be a list of tool schemas (found {type(tools).__name__})")
        if tools:
            context["tools"] = tools
    if "chat_template_kwargs" in detected.columns:
        kwargs = _json_field(row.get("chat_template_kwargs"), "chat_template_kwargs")
        if kwargs is not None and not isinstance(kwargs, dict):
            raise RowError(f"chat_template_kwargs must be a mapping (found {type(kwargs).__name__})")
        context.update(kwargs or {})
    return context or None


def _json_field(value: Any, column: str) -> Any:
    """A structured column as stored, or decoded when a file kept it as JSON text."""
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value) if value.strip() else None
    except json.JSONDecodeError as err:
        raise RowError(f"{column} is not valid JSON ({err.msg})") from None


def _content(value: Any, where: str) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(p, dict) and p.get("type") == "text" for p in value):
        return "".join(str(p.get("text") or "") for p in value)
    raise RowError(f"{where} must be a string (found {type(value).__name__})")


def with_system(messages: list[dict[str, str]], system_prompt: str | None) -> list[dict[str, str]]:
    """Prepend the recipe's system message when the conversation has none."""
    if system_prompt is None or any(m["role"] == "system" for m in messages):
        return messages
    return [{"role": "system", "content": system_prompt}, *messages]


def conversation(row: dict[str, Any], detected: Detected) -> list[dict[str, str]]:
    """The messages of a conversation-shaped row."""
    column = detected.columns[0]
    if detected.format == SHAREGPT:
        return sharegpt_messages(row[column], column)
    return messages_of(row[column], column)


def prompt_completion(row: dict[str, Any], detected: Detected) -> tuple[Any, Any]:
    """(prompt, completion) of a prompt-completion-shaped row: both strings, or both message lists."""
    if detected.format == ALPACA:
        instruction = _text(row.get("instruction"), "instruction")
        extra = _text(row.get("input"), "input") if "input" in detected.columns else ""
        prompt = [{"role": "user", "content": f"{instruction}\n\n{extra}" if extra.strip() else instruction}]
        system = row.get("system") if "system" in detected.columns else None
        if system:
            prompt = [{"role": "system", "content": _text(system, "system")}, *prompt]
        return prompt, [{"role": "assistant", "content": _text(row.get("output"), "output")}]
    prompt, completion = _scalar(row["prompt"]), _scalar(row["completion"])
    if isinstance(prompt, str) and isinstance(completion, str):
        return prompt, completion
    prompt = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else messages_of(prompt, "prompt")
    if isinstance(completion, str):
        completion = [{"role": "assistant", "content": completion}]
    else:
        completion = messages_of(completion, "completion")
    return prompt, completion


def prompt_of(row: dict[str, Any], detected: Detected) -> list[dict[str, Any]]:
    """The prompt a policy continues, as messages: the prompt column (a string is one user message), or a
    conversation without its final assistant turn (which the policy writes anew)."""
    if detected.format == PROMPT:
        column = detected.columns[0]
        return prompt_messages(row[column], column)
    return without_answer(conversation(row, detected), detected.columns[0])


def prompt_messages(value: Any, column: str) -> list[dict[str, Any]]:
    """A prompt column's value as messages: a string as one user message, a message list up to its final
    assistant turn."""
    if isinstance(value, str):
        if not value.strip():
            raise RowError(f"{column} is empty")
        return [{"role": "user", "content": value}]
    if isinstance(value, list):
        return without_answer(messages_of(value, column), column)
    raise RowError(f"{column} must be a string or a list of messages, got {type(value).__name__}")


def without_answer(messages: list[dict[str, Any]], column: str) -> list[dict[str, Any]]:
    """The conversation up to its final assistant turn (which the policy writes anew)."""
    if messages and messages[-1]["role"] == "assistant":
        messages = messages[:-1]
    if not messages or messages[-1]["role"] not in ("user", "tool"):
        raise RowError(f"{column} leaves no user turn to answer once the final assistant turn is removed")
    return messages


def _scalar(value: Any) -> Any:
    # CSV and some JSON files type "4" as a number; a prompt or completion is text.
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    return "" if value is None else value


def text_of(row: dict[str, Any], detected: Detected) -> str:
    """The text of a text-shaped row."""
    return _text(row[detected.columns[0]], detected.columns[0])


def _text(value: Any, column: str) -> str:
    if value is None:
        return ""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str):
        raise RowError(f"{column} must be a string (found {type(value).__name__})")
    return value


def is_plain_text_pair(row: dict[str, Any], detected: Detected) -> bool:
    """Whether a preference row is already-formatted text (every column a string), used as TRL uses it."""
    return all(isinstance(row.get(column), str) for column in detected.columns)


def preference(row: dict[str, Any], detected: Detected) -> tuple[list, list, list]:
    """(prompt, chosen, rejected) as message lists.

    Full conversations in chosen/rejected (UltraFeedback style) share their beginning: that becomes the
    prompt, and each response is what follows it. Otherwise the prompt column is the prompt. Beside message
    lists, a string becomes a user message (prompt) or an assistant message (response); rows of strings only
    are plain text and never come here (`is_plain_text_pair`).
    """
    chosen = _turns(row["chosen"], "chosen", "assistant")
    rejected = _turns(row["rejected"], "rejected", "assistant")
    shared = 0
    while shared < min(len(chosen), len(rejected)) and chosen[shared] == rejected[shared]:
        shared += 1
    if shared:
        prompt, chosen, rejected = chosen[:shared], chosen[shared:], rejected[shared:]
    elif detected.format == PREFERENCE:
        prompt = _turns(row["prompt"], "prompt", "user")
    else:
        raise RowError("chosen and rejected share no beginning, so there is no prompt; add a prompt column")
    if not prompt:
        raise RowError("the prompt is empty")
    return prompt, chosen, rejected


_LABEL_WORDS = {"true": True, "false": False, "1": True, "0": False, "yes": True, "no": False}


def label_of(row: dict[str, Any]) -> bool:
    """The desirability label of an unpaired row: a boolean, 0/1, or true/false (yes/no) as text (CSV)."""
    value = row.get("label")
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _LABEL_WORDS:
        return _LABEL_WORDS[value.strip().lower()]
    raise RowError(f"label must be true (desirable) or false (undesirable), found {value!r}")


def _turns(value: Any, column: str, role: str) -> list[dict[str, str]]:
    if isinstance(value, str):
        return [{"role": role, "content": value}]
    return messages_of(value, column)
