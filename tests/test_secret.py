from __future__ import annotations

import pickle
from pathlib import Path

import pytest

from hotpod.errors import SpecError
from hotpod.secret import Secret, env_name_for_key, kube_key


def test_seed_constructor() -> None:
    secret = Secret(name="hf-token", env_var="HF_TOKEN")
    assert secret.name == "hf-token"
    assert secret.env_var == "HF_TOKEN"
    assert secret.source == "env"
    assert secret.env_vars == ("HF_TOKEN",)


def test_immutable_and_hashable() -> None:
    secret = Secret("hf-token", values={"HF_TOKEN": "x"})
    with pytest.raises(AttributeError):
        secret.name = "other"  # type: ignore[misc]
    with pytest.raises(TypeError):
        secret.values["HF_TOKEN"] = "y"  # type: ignore[index]
    assert secret == Secret("hf-token", values={"HF_TOKEN": "x"})
    assert hash(secret) == hash(Secret("hf-token", values={"HF_TOKEN": "x"}))
    assert pickle.loads(pickle.dumps(secret)) == secret


def test_values_are_copied() -> None:
    given = {"A": "1"}
    secret = Secret("s", values=given)
    given["A"] = "2"
    assert secret.resolve() == {"A": "1"}


def test_resolve_from_values() -> None:
    secret = Secret("aws", values={"AWS_ACCESS_KEY_ID": "id", "AWS_SECRET_ACCESS_KEY": 123})
    assert secret.resolve() == {"AWS_ACCESS_KEY_ID": "id", "AWS_SECRET_ACCESS_KEY": "123"}
    assert secret.env_vars == ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
    assert secret.source == "values"


def test_resolve_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_TOKEN", "hf_live")
    assert Secret("hf-token", env_var="HF_TOKEN").resolve() == {"HF_TOKEN": "hf_live"}
    assert Secret("hf-token").resolve() == {"HF_TOKEN": "hf_live"}
    assert Secret("hf-token").resolve(environ={"HF_TOKEN": "given"}) == {"HF_TOKEN": "given"}


def test_default_env_var_is_derived_from_the_name() -> None:
    assert Secret("hf-token").local_env_var == "HF_TOKEN"
    assert Secret("my.api-key").local_env_var == "MY_API_KEY"
    assert Secret("x", env_var="OTHER").local_env_var == "OTHER"
    assert Secret("x", values={"A": "1"}).local_env_var is None
    with pytest.raises(SpecError, match=r"'1password'.*pass env_var"):
        Secret("1password")
    assert Secret("1password", env_var="OP_TOKEN").env_var == "OP_TOKEN"


def test_unset_environment_variable_message() -> None:
    with pytest.raises(SpecError) as info:
        Secret("hf-token", env_var="HF_TOKEN").resolve(environ={})
    assert str(info.value) == (
        "Secret 'hf-token': environment variable HF_TOKEN is not set on this machine; "
        "export it, or pass values={...} or path=..."
    )


def test_resolve_file_with_env_var(tmp_path: Path) -> None:
    file = tmp_path / "token"
    file.write_text("  hf_file\n")
    assert Secret("hf-token", "HF_TOKEN", path=str(file)).resolve() == {"HF_TOKEN": "hf_file"}
    file.write_text("\n")
    with pytest.raises(SpecError, match="is empty"):
        Secret("hf-token", "HF_TOKEN", path=file).resolve()  # type: ignore[arg-type]


def test_resolve_dotenv(tmp_path: Path) -> None:
    file = tmp_path / ".env"
    file.write_text(
        "# credentials\n"
        "\n"
        "AWS_ACCESS_KEY_ID=abc\n"
        "export AWS_SECRET_ACCESS_KEY = 'with spaces'\n"
        'QUOTED="a#b"\n'
        "PLAIN=value # a comment\n"
        "HASHED=a#b\n"
        "EMPTY=\n"
    )
    assert Secret("aws", path=str(file)).resolve() == {
        "AWS_ACCESS_KEY_ID": "abc",
        "AWS_SECRET_ACCESS_KEY": "with spaces",
        "QUOTED": "a#b",
        "PLAIN": "value",
        "HASHED": "a#b",
        "EMPTY": "",
    }


def test_dotenv_errors(tmp_path: Path) -> None:
    file = tmp_path / "bad.env"
    file.write_text("GOOD=1\nthis is not a pair\n")
    with pytest.raises(SpecError, match="line 2 is not KEY=VALUE"):
        Secret("s", path=str(file)).resolve()
    file.write_text("# only comments\n")
    with pytest.raises(SpecError, match="holds no KEY=VALUE lines"):
        Secret("s", path=str(file)).resolve()


def test_resolve_directory(tmp_path: Path) -> None:
    (tmp_path / "hf_token").write_text("hf_dir\n")
    (tmp_path / "OTHER").write_text("other")
    (tmp_path / ".hidden").write_text("skip")
    (tmp_path / "sub").mkdir()
    assert Secret("s", path=str(tmp_path)).resolve() == {"HF_TOKEN": "hf_dir", "OTHER": "other"}
    assert Secret("s", "HF_TOKEN", path=str(tmp_path)).resolve() == {"HF_TOKEN": "hf_dir"}
    with pytest.raises(SpecError, match="a file named MISSING or missing"):
        Secret("s", "MISSING", path=str(tmp_path)).resolve()


def test_directory_with_a_bad_file_name(tmp_path: Path) -> None:
    (tmp_path / "1st").write_text("x")
    with pytest.raises(SpecError, match="file '1st'"):
        Secret("s", path=str(tmp_path)).resolve()


def test_missing_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    secret = Secret("hf-token", path=str(missing))  # no I/O at construction
    with pytest.raises(SpecError) as info:
        secret.resolve()
    assert f"Secret 'hf-token': path {str(missing)!r} does not exist on this machine" in str(
        info.value
    )


def test_path_expands_user(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "tok").write_text("v")
    assert Secret("s", "TOK", path="~/tok").resolve() == {"TOK": "v"}


def test_repr_never_shows_values(tmp_path: Path) -> None:
    secret = Secret("hf-token", "HF_TOKEN", values={"HF_TOKEN": "hf_SuperSecret"})
    for text in [repr(secret), str(secret), str(secret.to_dict()), str([secret])]:
        assert "hf_SuperSecret" not in text
    assert repr(secret) == "Secret('hf-token', env_var='HF_TOKEN', values={'HF_TOKEN': '***'})"
    assert repr(Secret("hf-token")) == "Secret('hf-token')"
    assert secret.to_dict() == {
        "name": "hf-token",
        "env_var": "HF_TOKEN",
        "path": None,
        "value_names": ["HF_TOKEN"],
    }


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"name": "HF_TOKEN"}, "name='HF_TOKEN': expected a DNS-1123 subdomain"),
        ({"name": ""}, "name='': expected a DNS-1123 subdomain"),
        ({"name": "s", "env_var": "hf-token"}, "env_var='hf-token': expected an environment"),
        ({"name": "s", "values": {}}, "values={}: expected a non-empty dict"),
        ({"name": "s", "values": {"bad-key": "x"}}, "values key 'bad-key'"),
        ({"name": "s", "values": {"A": None}}, "values['A']=None"),
        ({"name": "s", "values": "A=1"}, "values='A=1': expected a dict"),
        ({"name": "s", "path": ""}, "path='': expected a path"),
        ({"name": "s", "path": 3}, "path=3: expected a path"),
        ({"name": "s", "values": {"A": "1"}, "path": "x"}, "values= and path= were both given"),
        ({"name": "s", "env_var": "B", "values": {"A": "1"}}, "env_var='B' is not a key of values"),
    ],
)
def test_bad_arguments(kwargs: dict[str, object], fragment: str) -> None:
    with pytest.raises(SpecError) as info:
        Secret(**kwargs)  # type: ignore[arg-type]
    assert fragment in str(info.value)


def test_values_and_path_are_keyword_only() -> None:
    with pytest.raises(TypeError):
        Secret("s", "A", {"A": "1"})  # type: ignore[misc]


def test_key_helpers() -> None:
    assert kube_key("HF_TOKEN") == "hf_token"
    assert env_name_for_key("hf-token") == "HF_TOKEN"
