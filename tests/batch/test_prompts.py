"""PromptSpec: picking the prompt columns, building each row's conversation, and row ids."""

from __future__ import annotations

import typing as t

import pyarrow as pa
import pydantic
import pytest

from rig_ray import GenerateParams
from rig_ray.batch.prompts import PromptSpec, content_id, table_rows
from rig_ray.errors import BatchInputError, RigRayError

# -- resolve -----------------------------------------------------------------------------------


def test_resolve_prefers_a_messages_column_over_a_prompt_column() -> None:
    spec = PromptSpec().resolve(["id", "prompt", "messages"])
    assert spec.messages_column == "messages"
    assert spec.template is None


def test_resolve_uses_the_prompt_column_as_template_without_a_messages_column() -> None:
    spec = PromptSpec().resolve(["id", "prompt"])
    assert spec.template == "$prompt"
    assert spec.messages_column is None


def test_resolve_keeps_the_other_settings_when_it_picks_a_default() -> None:
    spec = PromptSpec(system="be brief", id_column="key").resolve(["key", "prompt"])
    assert (spec.system, spec.id_column) == ("be brief", "key")


def test_resolve_without_prompt_or_messages_lists_the_columns() -> None:
    with pytest.raises(BatchInputError) as caught:
        PromptSpec().resolve(["question", "answer"])
    assert "question, answer" in str(caught.value)
    assert caught.value.column == "prompt"


def test_resolve_with_no_columns_at_all_says_none() -> None:
    with pytest.raises(BatchInputError, match=r"columns: none"):
        PromptSpec().resolve([])


@pytest.mark.parametrize("template", ["Q: $question", "Q: ${question}!", "$prompt and $question"])
def test_resolve_names_a_template_field_that_is_not_a_column(template: str) -> None:
    with pytest.raises(BatchInputError) as caught:
        PromptSpec(template=template).resolve(["prompt", "answer"])
    assert caught.value.column == "question"
    assert "'question'" in str(caught.value)
    assert "prompt, answer" in str(caught.value)


@pytest.mark.parametrize(
    ("spec", "said"),
    [
        (PromptSpec(template="$questoin"), "template field 'questoin' is not a column of the "
         "input; did you mean 'question'? (columns: id, question, params)"),
        (PromptSpec(template="$question", params_column="parms"), "params column 'parms' is not "
         "a column of the input; did you mean 'params'? (columns: id, question, params)"),
        (PromptSpec(template="$zzz"), "template field 'zzz' is not a column of the input "
         "(columns: id, question, params)"),
    ],
)  # fmt: skip
def test_a_missing_column_names_the_closest_one(spec: PromptSpec, said: str) -> None:
    with pytest.raises(BatchInputError) as caught:
        spec.resolve(["id", "question", "params"])
    assert said in str(caught.value)


def test_a_column_whose_name_is_not_an_identifier_is_a_braced_field() -> None:
    spec = PromptSpec(template="Q: ${Question Text} (${score-1})").resolve(
        ["Question Text", "score-1"]
    )
    (message,) = spec.conversation({"Question Text": "Why?", "score-1": 2})
    assert message.content == "Q: Why? (2)"
    with pytest.raises(BatchInputError, match=r"'\$\{\}' has a '\$' that starts no field"):
        PromptSpec(template="${}").resolve(["x"])


def test_resolve_names_a_missing_messages_column() -> None:
    with pytest.raises(BatchInputError) as caught:
        PromptSpec(messages_column="chat").resolve(["messages", "prompt"])
    assert caught.value.column == "chat"


def test_resolve_returns_an_explicit_template_unchanged_when_its_fields_exist() -> None:
    spec = PromptSpec(template="$a and ${b}, $$literal", system="s")
    assert spec.resolve(["a", "b", "messages"]) == spec


def test_resolve_rejects_a_template_and_a_messages_column_together() -> None:
    spec = PromptSpec(template="$prompt", messages_column="messages")
    with pytest.raises(BatchInputError, match="not both"):
        spec.resolve(["prompt", "messages"])


@pytest.mark.parametrize("field", ["template", "system", "messages_column", "id_column"])
@pytest.mark.parametrize("blank", ["", "   ", "\n\t"])
def test_blank_settings_are_rejected(field: str, blank: str) -> None:
    with pytest.raises(pydantic.ValidationError, match="must not be empty"):
        PromptSpec(**{field: blank})


def test_unknown_settings_are_rejected() -> None:
    with pytest.raises(pydantic.ValidationError):
        PromptSpec(tempalte="$prompt")  # type: ignore[call-arg]


def test_resolve_rejects_a_template_with_an_invalid_placeholder() -> None:
    with pytest.raises(BatchInputError):
        PromptSpec(template="It costs $5: $prompt").resolve(["prompt"])


# -- conversation from a template --------------------------------------------------------------


def test_template_fills_plain_and_braced_fields_and_keeps_a_dollar_literal() -> None:
    spec = PromptSpec(template="Q: $question (${lang}x) costs $$5")
    (message,) = spec.conversation({"question": "why", "lang": "fr", "other": None})
    assert (message.role, message.content) == ("user", "Q: why (frx) costs $5")


def test_template_writes_non_string_values_as_text() -> None:
    (message,) = PromptSpec(template="$n + $f").conversation({"n": 2, "f": 0.5})
    assert message.content == "2 + 0.5"


def test_template_writes_lists_and_structs_as_json() -> None:
    # A parsed column of an earlier pipeline stage, or a nested JSON or Parquet value.
    row = {"tags": ["a", "\u00e9"], "score": {"value": 7, "why": None}}
    (message,) = PromptSpec(template="$tags / $score").conversation(row)
    assert message.content == '["a", "\u00e9"] / {"value": 7, "why": null}'


def test_a_map_column_reaches_templates_and_params_as_an_object() -> None:
    # Arrow gives a map value as a list of key-value pairs; a row sees it as a dict.
    table = pa.table(
        {
            "meta": pa.array([[("lang", "fr")]], type=pa.map_(pa.string(), pa.string())),
            "params": pa.array([[("max_tokens", 5)]], type=pa.map_(pa.string(), pa.int64())),
        }
    )
    (row,) = table_rows(table)
    spec = PromptSpec(template="$meta", params_column="params")
    assert spec.conversation(row)[0].content == '{"lang": "fr"}'
    assert spec.row_params(row, GenerateParams()).max_tokens == 5


def test_template_accepts_an_empty_string_value() -> None:
    (message,) = PromptSpec(template="[$prompt]").conversation({"prompt": ""})
    assert message.content == "[]"


def test_bytes_are_written_as_the_utf8_text_they_hold() -> None:
    # A CSV column with one cell that is not UTF-8 is read as binary, every cell of it.
    spec = PromptSpec(template="[$prompt]", text_column="raw")
    (message,) = spec.conversation({"prompt": "caf\u00e9".encode()})
    assert message.content == "[caf\u00e9]"
    assert spec.text_prompt({"raw": b"plain"}) == "plain"


@pytest.mark.parametrize("column", ["prompt", "raw"])
def test_bytes_that_are_not_utf8_name_the_column(column: str) -> None:
    spec = PromptSpec(template="$prompt", text_column="raw")
    row = {"prompt": "ok", "raw": "ok", column: b"hel\xfflo"}
    with pytest.raises(BatchInputError, match=f"column '{column}' is not UTF-8 text") as caught:
        spec.text_prompt(row) if column == "raw" else spec.conversation(row)
    assert caught.value.column == column


@pytest.mark.parametrize("row", [{"prompt": "p", "topic": None}, {"prompt": "p"}])
def test_template_with_a_null_or_absent_value_names_the_column(row: dict[str, t.Any]) -> None:
    with pytest.raises(BatchInputError) as caught:
        PromptSpec(template="$prompt about $topic").conversation(row)
    assert caught.value.column == "topic"
    assert "'topic'" in str(caught.value)
    assert isinstance(caught.value, RigRayError)  # what GenerateStage turns into a row error


def test_system_goes_before_a_template_message() -> None:
    messages = PromptSpec(template="$prompt", system="be brief").conversation({"prompt": "hi"})
    assert [(m.role, m.content) for m in messages] == [("system", "be brief"), ("user", "hi")]


# -- conversation from a messages column -------------------------------------------------------


def _roles_and_contents(spec: PromptSpec, row: dict[str, t.Any]) -> list[tuple[str, str]]:
    return [(m.role, m.content) for m in spec.conversation(row)]


def test_messages_column_reads_openai_dicts() -> None:
    row = {
        "messages": [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "hello"},
            {"role": "user", "content": "bye"},
        ]
    }
    assert _roles_and_contents(PromptSpec(messages_column="messages"), row) == [
        ("user", "hi"),
        ("assistant", "hello"),
        ("user", "bye"),
    ]


def test_messages_column_reads_sharegpt_conversations() -> None:
    """ShareGPT's `{"from", "value"}` messages, as many datasets hold their conversations
    (a training `weight` dropped); a speaker it does not name is refused, naming the column."""
    row = {
        "conversations": [
            {"from": "system", "value": "be brief"},
            {"from": "human", "value": "hi", "weight": 0},
            {"from": "gpt", "value": "hello", "weight": 1},
            {"from": "human", "value": "bye"},
        ]
    }
    spec = PromptSpec(messages_column="conversations")
    assert _roles_and_contents(spec, row) == [
        ("system", "be brief"), ("user", "hi"), ("assistant", "hello"), ("user", "bye")
    ]  # fmt: skip
    with pytest.raises(BatchInputError, match="'conversations' is not a list of OpenAI") as no:
        spec.conversation({"conversations": [{"from": "function_call", "value": "{}"}]})
    assert no.value.column == "conversations" and "ShareGPT" in str(no.value)


def test_messages_column_drops_the_null_keys_arrow_adds_to_each_struct() -> None:
    row = {
        "messages": [
            {"role": "system", "content": "s", "name": None, "tool_call_id": None},
            {"role": "user", "content": "hi", "name": "ann", "tool_call_id": None},
        ]
    }
    messages = PromptSpec(messages_column="messages").conversation(row)
    assert [(m.role, m.content, m.name) for m in messages] == [
        ("system", "s", None),
        ("user", "hi", "ann"),
    ]


def test_system_is_not_added_when_the_conversation_starts_with_one() -> None:
    spec = PromptSpec(messages_column="messages", system="default system")
    row = {"messages": [{"role": "system", "content": "own"}, {"role": "user", "content": "hi"}]}
    assert _roles_and_contents(spec, row) == [("system", "own"), ("user", "hi")]


def test_system_is_put_first_when_a_system_message_comes_later() -> None:
    spec = PromptSpec(messages_column="messages", system="first")
    row = {"messages": [{"role": "user", "content": "hi"}, {"role": "system", "content": "late"}]}
    assert _roles_and_contents(spec, row) == [
        ("system", "first"),
        ("user", "hi"),
        ("system", "late"),
    ]


@pytest.mark.parametrize("value", [None, [], ()], ids=["null", "empty-list", "empty-tuple"])
def test_an_empty_messages_value_names_the_column(value: t.Any) -> None:
    with pytest.raises(BatchInputError) as caught:
        PromptSpec(messages_column="chat").conversation({"chat": value})
    assert caught.value.column == "chat"


def test_an_absent_messages_value_names_the_column() -> None:
    with pytest.raises(BatchInputError) as caught:
        PromptSpec(messages_column="chat").conversation({"other": 1})
    assert caught.value.column == "chat"


@pytest.mark.parametrize(
    "value",
    [
        [1, 2],
        [{"content": "no role"}],
        [{"role": "wizard", "content": "x"}],
        [{"role": "user", "content": "ok"}, None],
        [["user", "nested list"]],
    ],
    ids=["ints", "no-role", "bad-role", "null-item", "nested-list"],
)
def test_non_message_items_are_a_batch_input_error(value: t.Any) -> None:
    with pytest.raises(BatchInputError) as caught:
        PromptSpec(messages_column="messages").conversation({"messages": value})
    assert caught.value.column == "messages"
    assert "not a list of OpenAI messages" in str(caught.value)


def test_a_string_in_the_messages_column_is_a_batch_input_error() -> None:
    with pytest.raises(BatchInputError):
        PromptSpec(messages_column="messages").conversation({"messages": "hello"})


def test_a_single_message_dict_in_the_messages_column_is_a_batch_input_error() -> None:
    row = {"messages": {"role": "user", "content": "hi"}}
    with pytest.raises(BatchInputError):
        PromptSpec(messages_column="messages").conversation(row)


def test_a_number_in_the_messages_column_is_a_batch_input_error() -> None:
    with pytest.raises(BatchInputError):
        PromptSpec(messages_column="messages").conversation({"messages": 5})


# -- ids ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("abc", "abc"),
        (7, "7"),
        (0, "0"),
        (b"id-1", "id-1"),
        (b"a\xff", "a\\xff"),
        ({"k": "\u00e9", "n": None}, '{"k": "\u00e9", "n": null}'),
        (["a", 1], '["a", 1]'),
    ],
)
def test_row_id_is_the_id_column_value_as_text(value: t.Any, expected: str) -> None:
    assert PromptSpec().row_id({"id": value, "prompt": "p"}) == expected


def test_row_id_reads_the_configured_id_column() -> None:
    assert PromptSpec(id_column="key").row_id({"id": "not this", "key": "k1"}) == "k1"


@pytest.mark.parametrize(
    "row",
    [
        {"id": None, "prompt": "p"},
        {"prompt": "p"},
        {"prompt": "p", "other": "a column the prompt does not use"},
        {"prompt": "p", "other": None},
    ],
)
def test_row_id_without_a_value_is_the_hash_of_its_conversation(row: dict[str, t.Any]) -> None:
    spec = PromptSpec(system="Be brief.").resolve(["id", "prompt", "other"])
    assert spec.row_id(row) == content_id([["system", "Be brief."], ["user", "p"]])


def test_the_content_id_changes_with_what_the_prompt_uses() -> None:
    spec = PromptSpec(template="About $topic").resolve(["topic", "other"])
    assert spec.row_id({"topic": "a"}) != spec.row_id({"topic": "b"})
    other_system = PromptSpec(template="About $topic", system="S").resolve(["topic"])
    assert spec.row_id({"topic": "a"}) != other_system.row_id({"topic": "a"})
    # a row that cannot be rendered is keyed by the values its prompt reads
    assert spec.row_id({"topic": None, "other": 1}) == spec.row_id({"other": 2})


def test_content_id_does_not_depend_on_key_order() -> None:
    assert content_id({"a": 1, "b": "x", "c": None}) == content_id({"c": None, "b": "x", "a": 1})


@pytest.mark.parametrize(
    "other",
    [{"a": 2, "b": "x"}, {"a": 1, "b": "y"}, {"a": "1", "b": "x"}, {"a": 1, "b": "x", "c": None}],
)
def test_content_id_differs_when_a_value_differs(other: dict[str, t.Any]) -> None:
    assert content_id({"a": 1, "b": "x"}) != content_id(other)


def test_content_id_is_pinned_across_versions_and_machines() -> None:
    # Resuming a job matches output ids against these: a change here redoes finished work.
    assert content_id({"id": None, "prompt": "hello", "n": 3}) == "240b428f65abdaa8"
    assert content_id({"prompt": "héllo wörld", "n": 3, "id": None}) == "bb040b63f6b52d16"


def test_content_id_reads_nested_and_non_json_values() -> None:
    import datetime

    row = {"messages": [{"role": "user", "content": "hi"}], "day": datetime.date(2024, 1, 2)}
    same = {"day": datetime.date(2024, 1, 2), "messages": [{"content": "hi", "role": "user"}]}
    assert content_id(row) == content_id(same)
    assert len(content_id(row)) == 16


# -- per-row params ----------------------------------------------------------------------------


def test_row_params_lay_each_rows_own_over_the_jobs() -> None:
    from rig_ray import GenerateParams

    spec = PromptSpec(template="$q", params_column="p").resolve(["q", "p"])
    base = GenerateParams(temperature=0, max_tokens=8)
    own = spec.row_params({"q": "x", "p": {"max_tokens": 64, "top_k": None}}, base)
    assert (own.temperature, own.max_tokens, own.top_k) == (0, 64, None)
    assert spec.row_params({"q": "x", "p": '{"max_tokens": 3}'}, base).max_tokens == 3
    assert spec.row_params({"q": "x", "p": None}, base) == base
    assert PromptSpec(template="$q").row_params({"q": "x", "p": {"max_tokens": 1}}, base) == base


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ({"max_tokens": 0}, "max_tokens"),
        ({"nucleus": 1}, "nucleus"),
        ("not json", "Expecting value"),
        ([1, 2], "not an object"),
    ],
)
def test_row_params_that_are_not_params_name_the_column(value: t.Any, reason: str) -> None:
    from rig_ray import GenerateParams

    spec = PromptSpec(template="$q", params_column="p")
    with pytest.raises(BatchInputError, match=f"column 'p' does not hold valid params.*{reason}"):
        spec.row_params({"q": "x", "p": value}, GenerateParams())


def test_resolve_names_a_missing_params_column() -> None:
    with pytest.raises(BatchInputError, match="params column 'p' is not a column") as caught:
        PromptSpec(template="$q", params_column="p").resolve(["q"])
    assert caught.value.column == "p"
