"""Dockerfiles in (Image.from_dockerfile) and out (Image.to_dockerfile, write_build_context).

Compiled Dockerfiles are compared with golden files under tests/golden/dockerfile/. After an
intended change, regenerate them with:

    HOTPOD_UPDATE_GOLDEN=1 pytest tests/test_dockerfile.py
"""

from __future__ import annotations

import os
import textwrap
from pathlib import Path
from unittest.mock import ANY

import pytest
from click.testing import CliRunner

from hotpod.cli import main
from hotpod.dockerfile import compile_dockerfile, parse_dockerfile, write_build_context
from hotpod.errors import HotpodError, SpecError
from hotpod.image import Image

GOLDEN = Path(__file__).parent / "golden" / "dockerfile"
UPDATE = os.environ.get("HOTPOD_UPDATE_GOLDEN") == "1"


def assert_golden(case: str, text: str) -> None:
    path = GOLDEN / f"{case}.Dockerfile"
    if UPDATE:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        return
    assert path.exists(), f"no golden file {path}; write it with HOTPOD_UPDATE_GOLDEN=1 pytest"
    expected = path.read_text(encoding="utf-8")
    assert text == expected, (
        f"the compiled Dockerfile differs from {path}; if the change is intended, regenerate "
        "it with HOTPOD_UPDATE_GOLDEN=1 pytest tests/test_dockerfile.py"
    )


def write(path: Path, text: str = "") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return path


def files(root: Path) -> list[str]:
    """Every file under ``root``, as sorted relative POSIX paths."""
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A project directory, made the working directory (relative paths resolve against it)."""
    root = tmp_path / "project"
    root.mkdir()
    monkeypatch.chdir(root)
    return root


@pytest.fixture
def ctx(tmp_path: Path) -> Path:
    return tmp_path / "context"


# -- compiling: golden cases ------------------------------------------------------------------


def seed_image() -> Image:
    return (
        Image(image_id="pytorch/pytorch:2.0.0-cuda11.7-cudnn8-runtime")
        .pip_install(["transformers", "accelerate"])
        .set_env_vars({"HF_TOKEN": "..."})
        .run_bash("apt-get update && apt-get install -y git")
        .copy("./configs", "/app/configs")
    )


def test_seed_image_chain(project: Path, ctx: Path) -> None:
    text = seed_image().to_dockerfile()  # text only: ./configs need not exist
    assert_golden("seed", text)
    write(project / "configs" / "model.yaml", "layers: 2\n")
    write_build_context(seed_image(), ctx)
    assert (ctx / "Dockerfile").read_text() == text
    assert files(ctx / "files") == ["4-configs/model.yaml"]


def test_pip_force_and_local_paths(project: Path, ctx: Path) -> None:
    write(project / "libs" / "mypkg" / "pyproject.toml", "[project]\nname = 'mypkg'\n")
    write(project / "libs" / "mypkg" / "mypkg" / "__init__.py")
    write(project / "libs" / "mypkg" / "mypkg" / "__pycache__" / "x.cpython-311.pyc")
    write(project.parent / "wheels" / "tool-1.0-py3-none-any.whl", "not really a wheel")
    write(project / "requirements.txt", "numpy\n")
    image = (
        Image("python:3.11")
        .pip_install(["numpy", "pandas>=2", "torch==2.3; python_version>'3.8'"])
        .pip_install(["./libs/mypkg[dev]", "../wheels/tool-1.0-py3-none-any.whl"], force=True)
        .pip_install("-r requirements.txt --index-url https://example.com/simple")
    )
    text = write_build_context(image, ctx).joinpath("Dockerfile").read_text()
    assert_golden("pip", text)
    assert text == image.to_dockerfile()
    assert files(ctx / "pip") == [
        "mypkg/mypkg/__init__.py",
        "mypkg/pyproject.toml",
        "requirements.txt",
        "tool-1.0-py3-none-any.whl",
    ]


def test_env_escaping_survives_a_round_trip(tmp_path: Path) -> None:
    env = {
        "PLAIN": "dev",
        "EMPTY": "",
        "SPACES": "a b  c",
        "QUOTES": "say \"hi\" and 'bye'",
        "BACKSLASH": "C:\\path\\",
        "DOLLAR": "$HOME and ${USER} and $$",
        "UNICODE": "héllo wörld",
    }
    image = Image().set_env_vars(env).set_env_vars({"SECOND": "2"})
    text = image.to_dockerfile()
    assert_golden("env", text)
    again = parse_dockerfile(write(tmp_path / "Dockerfile", text))
    assert again.env_vars == {**env, "SECOND": "2"}
    assert again.not_live == ()


def test_env_value_with_a_line_break_is_refused() -> None:
    with pytest.raises(SpecError, match=r"step 1 \(set_env_vars KEY\): the value of KEY contains"):
        Image().set_env_vars({"KEY": "a\nb"}).to_dockerfile()


def test_run_bash_lists(tmp_path: Path) -> None:
    image = (
        Image("ubuntu:24.04")
        .run_bash(["apt-get update", "apt-get install -y git curl"])
        .run_bash('cd /tmp && echo "$HOME" > home.txt')
        .run_bash("set -e\nfor i in 1 2; do\n  echo $i\ndone")
        .run_bash("echo trailing \\")
        .run_bash('["looks", "like", "json"]')
    )
    text = image.to_dockerfile()
    assert_golden("run_bash", text)
    again = parse_dockerfile(write(tmp_path / "Dockerfile", text))
    commands = [c for s in again.steps for c in s.args["commands"]]
    assert commands == [c for s in image.steps for c in s.args["commands"]]


def test_copy_file_and_directory(project: Path, ctx: Path) -> None:
    write(project / "configs" / "a.yaml", "a: 1\n")
    write(project / "configs" / "nested" / "b.yaml", "b: 2\n")
    write(project / "settings.toml", "x = 1\n")
    write(project / "my notes.txt", "spaces\n")
    image = (
        Image("python:3.11")
        .copy("./configs", "/app/configs")
        .copy("settings.toml", "/etc/app/")
        .copy(project / "settings.toml", "relative/settings.toml")
        .copy("my notes.txt", "/app/my notes.txt")
        .copy("configs/", "/data/")
    )
    text = write_build_context(image, ctx).joinpath("Dockerfile").read_text()
    assert_golden("copy", text)
    assert files(ctx / "files") == [
        "1-configs/a.yaml",
        "1-configs/nested/b.yaml",
        "2-settings.toml",
        "3-settings.toml",
        "4-my notes.txt",
        "5-configs/a.yaml",
        "5-configs/nested/b.yaml",
    ]
    assert (ctx / "files" / "1-configs" / "nested" / "b.yaml").read_text() == "b: 2\n"


def test_sync_package_local_dir_and_importable(
    project: Path, ctx: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(project / "mylib" / "__init__.py", "VALUE = 1\n")
    write(project / "mylib" / "core.py", "def f(): return 1\n")
    write(project / "mylib" / "__pycache__" / "core.cpython-311.pyc")
    site = tmp_path / "site"
    write(site / "hotpod_tinypkg" / "__init__.py", "NAME = 'tiny'\n")
    write(site / "hotpod_tinymod.py", "NAME = 'mod'\n")
    monkeypatch.syspath_prepend(str(site))
    image = (
        Image("python:3.11")
        .sync_package("./mylib")
        .sync_package("hotpod_tinypkg")
        .sync_package("hotpod_tinymod")
    )
    text = write_build_context(image, ctx).joinpath("Dockerfile").read_text()
    assert_golden("sync_package", text)
    assert text.count("ENV PYTHONPATH=") == 1
    assert files(ctx / "packages") == [
        "hotpod_tinymod.py",
        "hotpod_tinypkg/__init__.py",
        "mylib/__init__.py",
        "mylib/core.py",
    ]


def test_sync_package_errors(project: Path, ctx: Path) -> None:
    with pytest.raises(SpecError, match=r"step 1 \(sync_package ./nope\): ./nope is not a dir"):
        write_build_context(Image().sync_package("./nope"), ctx)
    with pytest.raises(SpecError, match="package 'hotpod_no_such_pkg' is not importable here"):
        write_build_context(Image().sync_package("hotpod_no_such_pkg"), ctx)
    with pytest.raises(SpecError, match=r"'a\.b' is not a top-level package name"):
        Image().sync_package("a.b").to_dockerfile()


def test_workdir(project: Path, ctx: Path) -> None:
    write(project / "app.py", "print('hi')\n")
    image = (
        Image("python:3.11")
        .workdir("/app")
        .copy("app.py", "./")
        .run_bash("python app.py")
        .workdir("sub dir")
    )
    text = write_build_context(image, ctx).joinpath("Dockerfile").read_text()
    assert_golden("workdir", text)
    assert files(ctx / "files") == ["2-app.py"]


def test_default_base_and_empty_image() -> None:
    assert Image().to_dockerfile() == "FROM python:3.11-slim\n"
    assert Image("alpine:3").to_dockerfile() == "FROM alpine:3\n"


def test_missing_copy_source_names_the_step(project: Path, ctx: Path) -> None:
    image = Image().run_bash("true").copy("./configs", "/app/configs")
    assert "COPY files/2-configs /app/configs" in image.to_dockerfile()  # text only: no check
    with pytest.raises(SpecError) as info:
        write_build_context(image, ctx)
    message = str(info.value)
    assert message.startswith("step 2 (copy ./configs -> /app/configs): ")
    assert str(project / "configs") in message and "create it or fix the path" in message


# -- reading Dockerfiles ----------------------------------------------------------------------

ROUND_TRIP = r"""
# syntax=docker/dockerfile:1
ARG PYTHON=3.11
FROM python:${PYTHON}-slim

ARG APP_HOME=/srv/app
ARG VERSION=1.2
ENV APP_HOME=${APP_HOME} \
    PIP_NO_CACHE_DIR=1
env GREETING hello "big" world
WORKDIR $APP_HOME
COPY requirements.txt ./
run pip install -r requirements.txt && \
    # a comment inside a continued instruction
    echo "version $VERSION" '$VERSION'
COPY src/ ./src/
COPY ["config.yaml", "settings.toml", "conf/"]
RUN ["python", "-c", "print('ready')"]
EXPOSE 8000
CMD ["python", "-m", "app", "--port", "8000"]
"""


def make_round_trip_project(root: Path) -> Path:
    write(root / "requirements.txt", "numpy\n")
    write(root / "src" / "app.py", "print('app')\n")
    write(root / "src" / "util.py", "X = 1\n")
    write(root / "config.yaml", "a: 1\n")
    write(root / "settings.toml", "b = 2\n")
    return write(root / "Dockerfile", ROUND_TRIP)


def test_from_dockerfile_maps_each_instruction(project: Path) -> None:
    image = Image.from_dockerfile(make_round_trip_project(project))
    assert image.image_id == "python:3.11-slim"
    assert [(s.kind, dict(s.args)) for s in image.steps] == [
        ("set_env_vars", {"env_vars": {"APP_HOME": "/srv/app", "PIP_NO_CACHE_DIR": "1"}}),
        ("set_env_vars", {"env_vars": {"GREETING": "hello big world"}}),
        ("workdir", {"path": "/srv/app"}),
        (
            "copy",
            {
                "local_path": str(project / "requirements.txt"),
                "container_path": "/srv/app/requirements.txt",
            },
        ),
        (
            "run_bash",
            {
                "commands": (
                    "pip install -r requirements.txt &&     echo \"version 1.2\" '$VERSION'",
                )
            },
        ),
        ("copy", {"local_path": str(project / "src"), "container_path": "/srv/app/src"}),
        (
            "copy",
            {
                "local_path": str(project / "config.yaml"),
                "container_path": "/srv/app/conf/config.yaml",
            },
        ),
        (
            "copy",
            {
                "local_path": str(project / "settings.toml"),
                "container_path": "/srv/app/conf/settings.toml",
            },
        ),
        ("run_bash", {"commands": ("python -c 'print('\"'\"'ready'\"'\"')'",)}),
        ("dockerfile", {"instruction": "EXPOSE 8000", "reason": ANY}),
        (
            "dockerfile",
            {"instruction": 'CMD ["python", "-m", "app", "--port", "8000"]', "reason": ANY},
        ),
    ]
    assert [s.args["instruction"] for s in image.not_live] == [
        "EXPOSE 8000",
        'CMD ["python", "-m", "app", "--port", "8000"]',
    ]
    reasons = [s.args["reason"] for s in image.not_live]
    assert reasons[0].startswith("EXPOSE only records a port")
    assert reasons[1] == (
        "CMD only sets a container's default command; hotpod runs its own server in the pod"
    )


def test_from_dockerfile_round_trip(project: Path, ctx: Path) -> None:
    image = Image.from_dockerfile(make_round_trip_project(project))
    text = write_build_context(image, ctx).joinpath("Dockerfile").read_text()
    assert_golden("round_trip", text)
    assert files(ctx / "files") == [
        "4-requirements.txt",
        "6-src/app.py",
        "6-src/util.py",
        "7-config.yaml",
        "8-settings.toml",
    ]
    # The written context reads back as the same image, its files now taken from the context.
    again = Image.from_dockerfile(ctx / "Dockerfile")
    assert again.image_id == image.image_id
    assert len(again.steps) == len(image.steps)
    for before, after in zip(image.steps, again.steps, strict=True):
        if before.kind == "copy":
            assert after.args["container_path"] == before.args["container_path"]
            staged, original = Path(after.args["local_path"]), Path(before.args["local_path"])
            assert staged.is_relative_to(ctx / "files")
            assert files(staged) == files(original) if original.is_dir() else staged.is_file()
        else:
            assert after == before


def test_multi_stage_is_reported_not_live(project: Path) -> None:
    write(project / "main.go", "package main\n")
    dockerfile = write(
        project / "Dockerfile",
        """
        ARG GO=1.22
        FROM golang:${GO} AS build
        WORKDIR /src
        COPY . .
        RUN go build -o /out/app .

        FROM python:3.11-slim
        ARG GO
        COPY --from=build /out/app /usr/local/bin/app
        RUN echo "built with go $GO"
        CMD ["app"]
        """,
    )
    image = Image.from_dockerfile(dockerfile)
    assert image.image_id == "golang:1.22"
    assert [s.kind for s in image.steps] == [
        "dockerfile",
        "workdir",
        "copy",
        "run_bash",
        "dockerfile",
        "dockerfile",
        "dockerfile",
        "dockerfile",
    ]
    not_live = {s.args["instruction"]: s.args["reason"] for s in image.not_live}
    assert "names the build stage 'build'" in not_live["FROM golang:1.22 AS build"]
    assert "a second FROM starts build stage 2" in not_live["FROM python:3.11-slim"]
    assert "build stage 2" in not_live["COPY --from=build /out/app /usr/local/bin/app"]
    assert 'RUN echo "built with go 1.22"' in not_live  # the build argument is written in
    text = image.to_dockerfile()
    assert_golden("multi_stage", text)
    assert text.startswith("FROM golang:1.22 AS build\nWORKDIR /src\nCOPY files/3-project /src\n")


def test_copy_from_in_a_single_stage_is_not_live(project: Path) -> None:
    image = Image.from_dockerfile(
        write(project / "Dockerfile", "FROM python:3.11\nCOPY --from=nginx:1 /etc/nginx /n\n")
    )
    (step,) = image.not_live
    assert step.args["instruction"] == "COPY --from=nginx:1 /etc/nginx /n"
    assert "--from copies out of another build stage or image" in step.args["reason"]


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("ADD https://example.com/a.tar.gz /opt/", "ADD downloads https://example.com/a.tar.gz"),
        ("ADD data.tar.gz /opt/", "ADD unpacks the archive data.tar.gz"),
        ("COPY --chown=app:app a.txt /a.txt", "--chown=app:app sets ownership or mode"),
        ("RUN --mount=type=secret,id=tok cat /run/secrets/tok", "only works in docker build"),
        ("ENV PATH=/opt/venv/bin:$PATH", "it uses $PATH, which this Dockerfile does not define"),
        ("WORKDIR $HOME/app", "it uses $HOME"),
        ("ARG TOKEN", "ARG TOKEN has no default: it is a build argument"),
        ("ENV my-var=1", "my-var is not a variable name hotpod can set"),
        ("USER nobody", "USER switches the user"),
        ("VOLUME /data", "Compute(volumes="),
        ("LABEL team=ml", "LABEL only adds metadata"),
        ("HEALTHCHECK CMD curl -f localhost", "HEALTHCHECK is read from a built image"),
        ('ENTRYPOINT ["app"]', "ENTRYPOINT only sets"),
        ('SHELL ["/bin/bash", "-c"]', "hotpod runs steps with bash"),
        ("STOPSIGNAL SIGTERM", "STOPSIGNAL"),
        ("ONBUILD RUN make", "ONBUILD only runs when another Dockerfile"),
    ],
)
def test_instructions_reported_not_live(project: Path, line: str, reason: str) -> None:
    write(project / "a.txt")
    write(project / "data.tar.gz")
    image = Image.from_dockerfile(write(project / "Dockerfile", f"FROM python:3.11\n{line}\n"))
    (step,) = image.steps
    assert step.kind == "dockerfile"
    assert step.args["instruction"] == line
    assert reason in step.args["reason"]
    assert image.to_dockerfile() == f"FROM python:3.11\n{line}\n"


def test_arg_substitution_and_scope(project: Path) -> None:
    dockerfile = write(
        project / "Dockerfile",
        r"""
        ARG BASE=python
        ARG TAG=3.11
        FROM ${BASE}:$TAG
        ARG TAG
        ARG EMPTY=
        ARG WHO=world
        ARG DIR=/opt/${WHO}
        RUN echo $TAG ${WHO} ${EMPTY:-fallback} ${WHO:+set} \$WHO '$WHO' $BASE
        ENV TAG=from-env
        RUN echo $TAG
        WORKDIR ${DIR}
        WORKDIR $BASE
        EXPOSE ${PORT:-8000} $WHO
        """,
    )
    image = Image.from_dockerfile(dockerfile)
    assert image.image_id == "python:3.11"
    assert [(s.kind, dict(s.args)) for s in image.steps[:4]] == [
        ("run_bash", {"commands": ("echo 3.11 world fallback set \\$WHO '$WHO' $BASE",)}),
        ("set_env_vars", {"env_vars": {"TAG": "from-env"}}),
        ("run_bash", {"commands": ("echo $TAG",)}),  # ENV hides the ARG: left to the shell
        ("workdir", {"path": "/opt/world"}),
    ]
    # BASE was declared before FROM only, so the stage does not see it (as in docker build).
    assert [s.args["instruction"] for s in image.not_live] == [
        "WORKDIR $BASE",
        "EXPOSE ${PORT:-8000} world",
    ]
    assert (
        "it uses $BASE, which this Dockerfile does not define" in image.not_live[0].args["reason"]
    )


def test_dockerfile_syntax(project: Path) -> None:
    write(project / "a b.txt", "x")
    dockerfile = write(
        project / "Dockerfile",
        """
        # escape=`
        from python:3.11   # not a comment: part of nothing
        """,
    )
    with pytest.raises(SpecError, match="line 2: FROM: expected FROM IMAGE"):
        Image.from_dockerfile(dockerfile)
    dockerfile = write(
        project / "Dockerfile",
        """
        # escape=`
        FROM python:3.11
        Run echo one && `
            echo two
        copy ["a b.txt", "/app/"]
        RUN <<EOF
        set -e
        echo script
        EOF
        RUN cat <<-END > /etc/motd
        \thello
        \tEND
        """,
    )
    image = Image.from_dockerfile(dockerfile)
    assert [s.args for s in image.steps] == [
        {"commands": ("echo one &&     echo two",)},
        {"local_path": str(project / "a b.txt"), "container_path": "/app/a b.txt"},
        {"commands": ("set -e\necho script",)},
        {"commands": ("cat <<-END > /etc/motd\n\thello\n\tEND",)},
    ]


def test_env_forms(project: Path) -> None:
    dockerfile = write(
        project / "Dockerfile",
        """
        FROM python:3.11
        ENV EMPTY= EQUALS==x QUOTED="a b" SINGLE='$NOT' ESCAPED=a\\ b
        ENV LEGACY  two  words
        ENV REF=$EQUALS-${QUOTED}
        """,
    )
    image = Image.from_dockerfile(dockerfile)
    assert image.env_vars == {
        "EMPTY": "",
        "EQUALS": "=x",
        "QUOTED": "a b",
        "SINGLE": "$NOT",
        "ESCAPED": "a b",
        "LEGACY": "two  words",
        "REF": "=x-a b",
    }
    assert image.not_live == ()


def test_copy_sources(project: Path, tmp_path: Path) -> None:
    write(project / "a.py")
    write(project / "b.py")
    write(project / "docs" / "index.md")
    write(tmp_path / "elsewhere" / "c.py")
    dockerfile = write(
        project / "Dockerfile", "FROM python:3.11\nCOPY *.py /app/\nCOPY --link c.py rel/\n"
    )
    image = Image.from_dockerfile(dockerfile, context=tmp_path / "elsewhere")
    assert [dict(s.args) for s in image.steps] == [
        {"local_path": str(tmp_path / "elsewhere" / "c.py"), "container_path": "/app/c.py"},
        {"local_path": str(tmp_path / "elsewhere" / "c.py"), "container_path": "rel/c.py"},
    ]
    write(project / "Dockerfile", "FROM python:3.11\nCOPY *.py /app/\nADD docs /docs\n")
    with pytest.raises(SpecError, match=r"line 3: ADD: docs does not exist in the build context"):
        Image.from_dockerfile(dockerfile, context=tmp_path / "elsewhere")
    # default context: the Dockerfile's directory
    image = Image.from_dockerfile(project / "Dockerfile")
    assert [dict(s.args) for s in image.steps] == [
        {"local_path": str(project / "a.py"), "container_path": "/app/a.py"},
        {"local_path": str(project / "b.py"), "container_path": "/app/b.py"},
        {"local_path": str(project / "docs"), "container_path": "/docs"},
    ]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("RUN echo hi\n", "line 1: RUN: comes before FROM"),
        ("ARG X=1\n", "has no FROM instruction"),
        ("FROM python:3.11\nRUNN echo\n", "line 2: unknown instruction 'RUNN'"),
        ("FROM $NOPE\n", "line 1: FROM: $NOPE has no value"),
        ("FROM python 3.11\n", "line 1: FROM: expected FROM IMAGE or FROM IMAGE AS NAME"),
        ("FROM python:3.11\nCOPY missing.txt /x\n", "line 2: COPY: missing.txt does not exist"),
        ("FROM python:3.11\nCOPY ../x /x\n", "line 2: COPY: ../x is outside the build context"),
        ("FROM python:3.11\nCOPY *.nothing /x/\n", "line 2: COPY: no file in"),
        ("FROM python:3.11\nCOPY a b /x\n", "2 sources need a destination directory"),
        ("FROM python:3.11\nCOPY a\n", "expected at least a source and a destination"),
        ("FROM python:3.11\nENV\n", "expected ENV NAME=value"),
        ("FROM python:3.11\nENV A=1 B\n", "expected ENV NAME=value"),
        ("FROM python:3.11\nENV LEGACY\n", "expected ENV NAME=value"),
        ('FROM python:3.11\nENV A="open\n', "unterminated double quote"),
        ("FROM python:3.11\nRUN <<EOF\necho\n", "here-document EOF never ends"),
        ("FROM python:3.11\nRUN\n", "RUN: has no command"),
    ],
)
def test_parse_errors_name_the_line(project: Path, text: str, message: str) -> None:
    write(project / "a")
    write(project / "b")
    dockerfile = write(project / "Dockerfile", text)
    with pytest.raises(SpecError) as info:
        Image.from_dockerfile(dockerfile)
    assert message in str(info.value)
    assert str(info.value).startswith(str(dockerfile))


def test_missing_dockerfile(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match=r"Dockerfile .*nope does not exist; check the path"):
        Image.from_dockerfile(tmp_path / "nope")
    write(tmp_path / "Dockerfile", "FROM alpine:3\n")
    assert Image.from_dockerfile(tmp_path) == Image("alpine:3")  # a directory: its Dockerfile


# -- the build context ------------------------------------------------------------------------


def test_build_context_is_rewritten_and_never_clobbers(project: Path, ctx: Path) -> None:
    write(project / "a.txt", "a")
    write(project / "b.txt", "b")
    assert write_build_context(Image().copy("a.txt", "/a"), ctx) == ctx
    assert files(ctx) == [".hotpod-build-context", "Dockerfile", "files/1-a.txt"]
    write_build_context(Image().copy("b.txt", "/b"), ctx)  # stale files go away
    assert files(ctx) == [".hotpod-build-context", "Dockerfile", "files/1-b.txt"]
    with pytest.raises(HotpodError, match="is not empty and was not written by hotpod"):
        write_build_context(Image(), project)
    with pytest.raises(HotpodError, match="is a file; give a directory"):
        write_build_context(Image(), project / "a.txt")


def test_copy_of_the_working_directory_skips_the_context_inside_it(project: Path) -> None:
    write(project / "app.py")
    out = project / "build"
    write_build_context(Image().copy(".", "/app"), out)
    assert files(out / "files") == ["1-project/app.py"]


def test_compile_text_only_needs_no_files(project: Path) -> None:
    image = Image().pip_install("./missing").copy("missing", "/m").sync_package("missing_pkg")
    assert compile_dockerfile(image) == textwrap.dedent(
        """\
        FROM python:3.11-slim
        COPY pip/missing /tmp/hotpod/pip/missing
        RUN python -m pip install --no-cache-dir /tmp/hotpod/pip/missing
        COPY files/2-missing /m
        ENV PYTHONPATH=/opt/hotpod/packages${PYTHONPATH:+:$PYTHONPATH}
        COPY packages/missing_pkg /opt/hotpod/packages/missing_pkg
        """
    )


# -- the CLI ----------------------------------------------------------------------------------


def test_cli_prints_and_writes(project: Path, ctx: Path) -> None:
    write(project / "conf" / "x.yaml", "x: 1\n")
    write(
        project / "images.py",
        """
        import hotpod as kt

        image = kt.Image("python:3.11").pip_install(["numpy"]).copy("./conf", "/app/conf")
        compute = kt.Compute(cpus="1", image=image)
        """,
    )
    runner = CliRunner()
    result = runner.invoke(main, ["dockerfile", "images.py:image"])
    assert result.exit_code == 0, result.output
    expected = (
        "FROM python:3.11\n"
        "RUN python -m pip install --no-cache-dir numpy\n"
        "COPY files/2-conf /app/conf\n"
    )
    assert result.output == expected
    result = runner.invoke(main, ["dockerfile", f"{project / 'images.py'}:compute", "-o", str(ctx)])
    assert result.exit_code == 0, result.output
    assert f"Build it with: docker build {ctx}" in result.output
    assert (ctx / "Dockerfile").read_text() == expected
    assert files(ctx / "files") == ["2-conf/x.yaml"]
    result = runner.invoke(main, ["dockerfile", "images:image"])  # a module name
    assert result.exit_code == 0, result.output
    assert result.output == expected


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("nope.py:image", "No such file 'nope.py'"),
        ("images.py:nope", "images.py has no object named 'nope'"),
        ("images.py:number", "'number' in images.py is of type int, not an Image or a Compute"),
        ("images.py:bare", "the Compute 'bare' in images.py has no image"),
        ("images.py", "'images.py' is not FILE:OBJ"),
        ("broken.py:x", "importing broken.py failed with ZeroDivisionError"),
        ("images.py:missing", "step 1 (copy ./missing -> /m): "),
    ],
)
def test_cli_errors(project: Path, ctx: Path, target: str, message: str) -> None:
    write(
        project / "images.py",
        """
        import hotpod as kt

        number = 3
        bare = kt.Compute(cpus="1")
        missing = kt.Image().copy("./missing", "/m")
        """,
    )
    write(project / "broken.py", "1 / 0\n")
    result = CliRunner().invoke(main, ["dockerfile", target, "-o", str(ctx)])
    assert result.exit_code != 0
    assert message in result.output
