"""``hotpod dockerfile`` and ``hotpod manifest``: commands that compile a spec named FILE:OBJ."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from typing import Any

import click

from hotpod.errors import HotpodError


def _fail(exc: Exception) -> None:
    """End a command with ``exc``'s message (every hotpod command fails this way)."""
    raise click.ClickException(str(exc)) from exc


def _load_target(target: str, wanted: str = "an Image or a Compute") -> tuple[Any, str]:
    """The object ``FILE:OBJ`` (or ``module:OBJ``) names, and a label for messages."""
    where, sep, attr = target.rpartition(":")
    if not sep or not where or not attr:
        raise click.BadParameter(
            f"{target!r} is not FILE:OBJ; write e.g. train.py:image or mypkg.images:image",
            param_hint="FILE:OBJ",
        )
    try:
        if where.endswith(".py") or "/" in where or "\\" in where:
            path = Path(where).expanduser().absolute()
            if not path.is_file():
                raise click.ClickException(f"No such file {where!r}; give the path of a .py file")
            spec = importlib.util.spec_from_file_location(f"_hotpod_cli_{path.stem}", path)
            assert spec is not None and spec.loader is not None
            module = importlib.util.module_from_spec(spec)
            sys.modules[spec.name] = module
            sys.path.insert(0, str(path.parent))
            try:
                spec.loader.exec_module(module)
            finally:
                sys.path.remove(str(path.parent))
        else:
            if "" not in sys.path:
                sys.path.insert(0, "")
            module = importlib.import_module(where)
    except click.ClickException:
        raise
    except Exception as exc:
        raise click.ClickException(
            f"importing {where} failed with {type(exc).__name__}: {exc}"
        ) from exc
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise click.ClickException(
                f"{where} has no object named {attr!r}; name {wanted} defined there"
            )
        obj = getattr(obj, part)
    return obj, f"{attr!r} in {where}"


@click.command()
@click.argument("target", metavar="FILE:OBJ")
@click.option(
    "-o",
    "--output",
    type=click.Path(file_okay=False, path_type=Path),
    help="Write the Dockerfile and the files it copies to this directory.",
)
def dockerfile(target: str, output: Path | None) -> None:
    """Compile an Image (or a Compute's image) to a Dockerfile.

    FILE is a .py file or a module name, OBJ the name of an Image or a Compute in it. Without
    -o the Dockerfile is printed; with -o DIR, DIR becomes a build context for 'docker build DIR'.
    """
    from hotpod.compute import Compute
    from hotpod.dockerfile import write_build_context
    from hotpod.image import Image

    obj, label = _load_target(target)
    if isinstance(obj, Compute):
        if obj.image is None:
            raise click.ClickException(
                f"the Compute {label} has no image; give it one with "
                "kt.Compute(image=kt.Image(...))"
            )
        obj = obj.image
    if not isinstance(obj, Image):
        raise click.ClickException(
            f"{label} is of type {type(obj).__name__}, not an Image or a Compute; name one of those"
        )
    try:
        if output is None:
            click.echo(obj.to_dockerfile(), nl=False)
            return
        out = write_build_context(obj, output)
    except HotpodError as exc:
        _fail(exc)
    click.echo(
        f"Wrote {out / 'Dockerfile'} and its build context. Build it with: docker build {out}"
    )


@click.command()
@click.argument("target", metavar="FILE:OBJ")
@click.option("--name", "name", help="The service name (default: OBJ, made a DNS label).")
def manifest(target: str, name: str | None) -> None:
    """Print the Kubernetes manifests a deploy of a Compute would apply, as YAML.

    FILE is a .py file or a module name, OBJ the name of a Compute in it.
    """
    from hotpod.compute import Compute
    from hotpod.deploy import service_name

    obj, label = _load_target(target, "a Compute")
    if not isinstance(obj, Compute):
        raise click.ClickException(
            f"{label} is of type {type(obj).__name__}, not a Compute; name a kt.Compute"
        )
    try:
        click.echo(obj.manifests(name or service_name(target.rpartition(":")[2])), nl=False)
    except HotpodError as exc:
        _fail(exc)
