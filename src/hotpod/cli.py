"""The ``hotpod`` command (alias ``kt``): a thin layer over the public Python API."""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import json
import sys
import time
from pathlib import Path
from typing import Any

import click

from hotpod.errors import HotpodError


def _fail(exc: Exception) -> None:
    raise click.ClickException(str(exc)) from exc


def _age(created: float) -> str:
    s = int(time.time() - created)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= size:
            return f"{s // size}{unit}"
    return f"{s}s"


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="hotpod")
def main() -> None:
    """Run Python functions and classes on a pool of pods and call them like local code."""


@main.command("list")
def list_cmd() -> None:
    """List services."""
    from hotpod.services import list_services

    try:
        services = list_services()
    except HotpodError as exc:
        _fail(exc)
    if not services:
        click.echo("No services. Deploy one with kt.fn(f).to(kt.Compute(...)).")
        return
    rows = [("NAME", "KIND", "READY", "RESTARTS", "AGE")]
    for s in services:
        running = sum(p.status == "running" for p in s.pods)
        rows.append(
            (
                s.name,
                s.meta.get("kind", "fn"),
                f"{running}/{s.replicas}",
                str(sum(p.restarts for p in s.pods)),
                _age(s.created_at),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        click.echo("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())


@main.command()
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def describe(name: str, as_json: bool) -> None:
    """Show a service: its code, resources and pods."""
    from hotpod.services import describe as describe_service

    try:
        d = describe_service(name)
    except HotpodError as exc:
        _fail(exc)
    if as_json:
        click.echo(json.dumps(d, indent=2))
        return
    click.echo(f"Name:      {d['name']}")
    click.echo(f"Kind:      {d['kind']}")
    click.echo(f"Code:      {d['code']}")
    click.echo(f"Backend:   {d['backend']}")
    click.echo(f"Created:   {d['created']}")
    click.echo(f"Replicas:  {d['replicas']}")
    if d["resources"]:
        click.echo("Resources: " + ", ".join(f"{k}={v}" for k, v in d["resources"].items()))
    if d["labels"]:
        click.echo("Labels:    " + ", ".join(f"{k}={v}" for k, v in d["labels"].items()))
    click.echo("Pods:")
    for p in d["pods"]:
        state = "ready" if p["ready"] else "not ready"
        exit_note = f", last exit {p['last_exit']}" if p["last_exit"] is not None else ""
        click.echo(
            f"  {p['name']:<20} {p['status']:<11} {state:<10} {p['url']}  pid {p['pid']}  "
            f"restarts {p['restarts']}{exit_note}  launch {p['launch_id'] or '-'}"
        )
    method = " METHOD" if d["kind"] == "cls" else ""
    click.echo(f"Call it:   hotpod call {d['name']}{method} --args '[...]'")
    click.echo(f"Logs:      hotpod logs {d['name']} -f")


@main.command()
@click.argument("name")
@click.option("-f", "--follow", is_flag=True, help="Keep printing new lines.")
@click.option("--pod", help="Only this pod (e.g. NAME-0).")
@click.option("--tail", type=int, help="Only the last N lines of each pod.")
def logs(name: str, follow: bool, pod: str | None, tail: int | None) -> None:
    """Print a service's pod logs."""
    from hotpod.services import logs as service_logs

    try:
        for pod_name, line in service_logs(name, pod=pod, follow=follow, tail=tail):
            click.echo(f"({pod_name}) {line}")
    except HotpodError as exc:
        _fail(exc)
    except KeyboardInterrupt:
        pass


def _json_arg(value: str | None, what: str, kind: type) -> Any:
    if value is None:
        return kind()
    try:
        parsed = json.loads(value)
    except ValueError as exc:
        raise click.BadParameter(f"not valid JSON: {exc}", param_hint=what) from None
    if not isinstance(parsed, kind):
        raise click.BadParameter(f"expected a JSON {kind.__name__}", param_hint=what)
    return parsed


@main.command()
@click.argument("name")
@click.argument("method", required=False)
@click.option("--args", "args_json", help="Positional arguments as a JSON array.")
@click.option("--kwargs", "kwargs_json", help="Keyword arguments as a JSON object.")
@click.option("--timeout", type=float, help="Seconds to wait for the result.")
def call(
    name: str,
    method: str | None,
    args_json: str | None,
    kwargs_json: str | None,
    timeout: float | None,
) -> None:
    """Call a service (METHOD for a class) and print the result as JSON."""
    from hotpod.module import RemoteCls
    from hotpod.services import lookup

    args = _json_arg(args_json, "--args", list)
    kwargs = _json_arg(kwargs_json, "--kwargs", dict)
    try:
        handle = lookup(name)
    except HotpodError as exc:
        _fail(exc)
    if timeout is not None:
        handle = handle.with_options(timeout=timeout)
    if isinstance(handle, RemoteCls):
        if not method:
            raise click.UsageError(
                f"{name!r} is a class: name the method, 'hotpod call {name} METHOD'"
            )
        target = getattr(handle, method)
    elif method:
        raise click.UsageError(f"{name!r} is a function: it has no method {method!r}")
    else:
        target = handle
    try:
        with contextlib.redirect_stdout(sys.stderr):  # the pods' logs; stdout is the result
            result = target(*args, **kwargs)
    except HotpodError as exc:
        _fail(exc)
    except Exception as exc:  # the remote code raised
        click.echo(f"Error: the call raised {type(exc).__name__}: {exc}", err=True)
        if exc.__cause__ is not None:
            click.echo(str(exc.__cause__).strip(), err=True)
        sys.exit(1)
    try:
        click.echo(json.dumps(result, indent=2, default=repr))
    except (TypeError, ValueError):
        click.echo(repr(result))


@main.command()
@click.argument("name", required=False)
@click.option("--all", "all_", is_flag=True, help="Every service, and stop the local controller.")
def teardown(name: str | None, all_: bool) -> None:
    """Delete a service and its pods (or all of them)."""
    from hotpod.services import teardown as teardown_services

    if bool(name) == all_:
        raise click.UsageError("give a service NAME or --all (not both)")
    try:
        deleted = teardown_services(name, all=all_)
    except HotpodError as exc:
        _fail(exc)
    if not deleted and not all_:
        _fail(HotpodError(f"no service named {name!r}; 'hotpod list' shows what runs"))
    for n in deleted:
        click.echo(f"deleted {n}")
    if all_ and not deleted:
        click.echo("No services were running.")


def _load_target(target: str) -> tuple[Any, str]:
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
                f"{where} has no object named {attr!r}; name an Image or a Compute defined there"
            )
        obj = getattr(obj, part)
    return obj, f"{attr!r} in {where}"


@main.command()
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


@main.command()
@click.argument("name")
@click.option("--pod", help="The pod whose session to attach to (default: the first waiting).")
def debug(name: str, pod: str | None) -> None:
    """Attach this terminal to a breakpoint() waiting in a service's remote code."""
    from hotpod.debugger import attach_service

    try:
        attached = attach_service(name, pod)
    except HotpodError as exc:
        _fail(exc)
    if not attached:
        _fail(
            HotpodError(
                f"no breakpoint() is waiting on {name!r}"
                + (f" pod {pod!r}" if pod else "")
                + "; one waits while a call stops at it (see 'hotpod logs "
                + name
                + "')"
            )
        )


if __name__ == "__main__":
    main()
