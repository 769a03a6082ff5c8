"""The ``hotpod`` command (alias ``kt``): a thin layer over the public Python API."""

from __future__ import annotations

import contextlib
import json
import sys
import time
from collections.abc import Sequence
from typing import Any

import click

from hotpod.cli_specs import _fail, dockerfile, manifest
from hotpod.errors import HotpodError


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


main.add_command(dockerfile)
main.add_command(manifest)


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


def _table(rows: Sequence[tuple[str, ...]]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        click.echo("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())


def _when(epoch: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(epoch)) if epoch else "-"


@main.command()
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def describe(name: str, as_json: bool) -> None:
    """Show a service: its code, resources, pods, image steps and how to call it."""
    from hotpod.services import describe as describe_service

    try:
        d = describe_service(name)
    except HotpodError as exc:
        _fail(exc)
    if as_json:
        click.echo(json.dumps(d, indent=2))
        return
    ready = sum(p["ready"] for p in d["pods"])
    click.echo(f"Name:      {d['name']}")
    click.echo(f"Kind:      {d['kind']}")
    click.echo(f"Code:      {d['code']}")
    click.echo(f"Backend:   {d['backend']}")
    click.echo(f"Created:   {d['created']}")
    click.echo(f"Replicas:  {d['replicas']} ({ready} ready)")
    click.echo(f"Launch:    {d['launch_id'] or '-'}")
    auto = d.get("autoscaler")
    if auto:
        click.echo(
            f"Autoscale: {auto['url']}: desired {auto['desired']}, actual {auto['actual']}, "
            f"ready {auto['ready']}, in flight {auto['in_flight']}, queued {auto['queued']}; "
            f"{auto['metric']} {auto['observed']:g} per window (target {auto['target']:g}/pod, "
            f"{auto['min_scale']}-{auto['max_scale']} pods{', panic' if auto['panic'] else ''})"
        )
        click.echo(f"New pods:  {_new_pods_launch(auto)}")
    if d["resources"]:
        click.echo("Resources: " + ", ".join(f"{k}={v}" for k, v in d["resources"].items()))
    if d["labels"]:
        click.echo("Labels:    " + ", ".join(f"{k}={v}" for k, v in d["labels"].items()))
    click.echo("Pods:")
    rows = [("  NAME", "STATUS", "READY", "RESTARTS", "LAUNCH", "PID", "ENDPOINT")]
    for p in d["pods"]:
        restarts = str(p["restarts"])
        if p["last_exit"] is not None:
            restarts += f" (last exit {p['last_exit']})"
        rows.append(
            (
                f"  {p['name']}",
                p["status"],
                "ready" if p["ready"] else "not ready",
                restarts,
                p["launch_id"] or "-",
                str(p["pid"] or "-"),
                p["url"],
            )
        )
    _table(rows)
    steps: list[dict[str, Any]] = next((p["steps"] for p in d["pods"] if p["steps"]), [])
    if steps:
        click.echo("Image steps:")
        for i, s in enumerate(steps, start=1):
            took = f"{s['seconds']:.2f} s" if s.get("seconds") is not None else "-"
            state = f"applied {_when(s.get('at'))}, {took}" if s["applied"] else "not applied"
            click.echo(f"  {i}. {s['step']}  ({state})")
    for p in d["pods"]:
        app = p.get("app")
        if app and (app["restarts"] or not app["ready"]):
            click.echo(f"App on {p['name']}: {_app_state(app)}")
    for p in d["pods"]:
        error = p["launch_error"]
        if error and error.get("launch_id") != p["launch_id"]:
            click.echo(
                f"Last launch failed on {p['name']}: {error.get('message')} "
                f"(run 'hotpod check {d['name']}')"
            )
    click.echo("Call it:")
    click.echo(f"  Python:  {d['call']['python']}")
    click.echo(f"  CLI:     {d['call']['cli']}")
    click.echo(f"Logs:      hotpod logs {d['name']} -f")
    click.echo(
        f"Metrics:   GET <pod endpoint>/metrics with the bearer token 'hotpod token {d['name']}'"
        " prints"
    )
    click.echo(f"Diagnose:  hotpod check {d['name']}")


def _app_state(app: dict[str, Any]) -> str:
    """A kt.app's process, when it has exited on its own (the pod starts it again)."""
    if app["running"] and app["ready"]:
        state = f"running (pid {app['pid']})"
    elif app["running"]:
        state = "started again, not answering yet"
    elif app.get("restart_in") is not None:
        state = f"not running; started again in {app['restart_in']:.1f} s"
    else:
        state = "not running"
    return f"{state}; {app['restarts']} restarts, last exit code {app['last_exit']}"


def _new_pods_launch(auto: dict[str, Any]) -> str:
    """Which launch the pods an autoscaler starts get (the last one a pod served)."""
    text = f"launch {auto['launch']}" if auto.get("launch") else "no launch yet"
    if auto.get("pending"):
        text += f"; launch {auto['pending']} is tried first (no pod serves it yet)"
    failed = auto.get("failed")
    if failed:
        text += (
            f"; launch {failed['launch_id']} failed on {failed['pod']} ({failed['message']}) "
            "and is not used"
        )
    return text


@main.command()
@click.argument("name")
def check(name: str) -> None:
    """Diagnose why a service is not ready, and the fix to try.

    Shows each pod's state, a failed setup step with its output, the last log lines. Exits 0
    when the service is healthy, 1 otherwise.
    """
    from hotpod.diagnose import check as check_service

    try:
        c = check_service(name)
    except HotpodError as exc:
        _fail(exc)
    verdict = "healthy" if c.healthy else "NOT HEALTHY"
    click.echo(f"Service {c.service!r}: {verdict} ({c.ready}/{c.replicas} pods ready)")
    for p in c.pods:
        state = ", ".join(
            [
                p.status,
                "ready" if p.ready else "not ready",
                f"launch {p.launch_id or '-'}",
                f"{p.restarts} restarts",
            ]
        )
        click.echo(f"\n{p.name}: {'ok' if p.problem is None else 'PROBLEM'} ({state})")
        if p.problem is None:
            continue
        click.echo(f"  Problem: {p.problem}")
        if p.detail.strip():
            click.echo("  Output:")
            for line in p.detail.rstrip().splitlines():
                click.echo(f"    {line}")
        if p.log_tail:
            click.echo("  Last log lines:")
            for line in p.log_tail:
                click.echo(f"    {line}")
        click.echo(f"  Fix: {p.fix}")
    for problem, fix in zip(c.problems, c.fixes, strict=True):
        click.echo(f"\nProblem: {problem}\n  Fix: {fix}")
    if not c.healthy:
        sys.exit(1)


def _since(_ctx: click.Context, _param: click.Parameter, value: str | None) -> float | None:
    if value is None:
        return None
    from hotpod.loglines import parse_since

    try:
        return parse_since(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


@main.command()
@click.argument("name", required=False)
@click.option("-f", "--follow", is_flag=True, help="Keep printing new lines (Ctrl-C stops).")
@click.option("--pod", help="Only this pod (e.g. NAME-0).")
@click.option("--tail", type=click.IntRange(min=1), help="Only the last N lines of each pod.")
@click.option(
    "--since",
    callback=_since,
    help="Only lines since a time: a duration back (90s, 10m, 2h, 1d) or an ISO 8601 time.",
)
@click.option("--request", help="Only the lines of one call, on every pod (its request id).")
@click.option("--purge", is_flag=True, help="Delete the service's kept logs instead.")
def logs(
    name: str | None,
    follow: bool,
    pod: str | None,
    tail: int | None,
    since: float | None,
    request: str | None,
    purge: bool,
) -> None:
    """Print a service's pod logs, whether it runs or not.

    Each line reads 'TIME [r=REQUEST] rank=N pod=POD | text'; REQUEST is the id of the call
    that printed it. Logs outlive teardown: they stay in HOTPOD_HOME/logs until
    'hotpod logs NAME --purge'. Without NAME, lists the services whose logs are kept.
    """
    from hotpod import services

    try:
        if name is None:
            if purge:
                raise click.UsageError("--purge needs the NAME of the service whose logs to delete")
            names = services.logged_services()
            click.echo("\n".join(names) if names else "No logs kept.")
            return
        if purge:
            if not services.purge_logs(name):
                _fail(HotpodError(f"no logs kept for {name!r}; 'hotpod logs' lists them"))
            click.echo(f"deleted the logs of {name}")
            return
        lines = services.logs(name, pod=pod, follow=follow, tail=tail, since=since, request=request)
        for line in lines:
            click.echo(line.display())
    except HotpodError as exc:
        _fail(exc)
    except KeyboardInterrupt:
        pass


def _size(n: float | None) -> str:
    if n is None:
        return "-"
    for unit in ("", "Ki", "Mi", "Gi"):
        if n < 1024 or unit == "Gi":
            return f"{n:.0f}{unit}" if unit == "" else f"{n:.1f}{unit}"
        n /= 1024
    return f"{n:.1f}Gi"


@main.command()
@click.argument("name", required=False)
@click.option("-w", "--watch", is_flag=True, help="Refresh until Ctrl-C.")
@click.option(
    "--interval",
    type=click.FloatRange(min=0.1),
    default=1.0,
    show_default=True,
    help="Seconds over which CPU use is measured (and between refreshes).",
)
def top(name: str | None, watch: bool, interval: float) -> None:
    """Show CPU and memory use of each pod (of NAME, or of every service).

    CPU is in percent of one core, memory the resident memory of the pod's processes.
    """
    from hotpod.services import top as pod_top

    try:
        while True:
            stats = pod_top(name, interval)
            if watch:
                click.clear()
            if not stats:
                click.echo("No pods." if name is None else f"{name!r} has no pods.")
            else:
                rows = [
                    ("SERVICE", "POD", "STATUS", "CPU%", "CPUS", "MEMORY", "REQUESTED", "PROCS")
                ]
                for s in stats:
                    rows.append(
                        (
                            s.service,
                            s.pod,
                            s.status,
                            "-" if s.cpu_percent is None else f"{s.cpu_percent:.1f}",
                            f"{s.cpus:g}" if s.cpus else "-",
                            _size(s.rss_bytes),
                            _size(s.memory_bytes),
                            str(s.processes),
                        )
                    )
                _table(rows)
            if not watch:
                return
    except HotpodError as exc:
        _fail(exc)
    except KeyboardInterrupt:
        pass


@main.command()
@click.argument("name")
@click.option("--pod", help="The pod (default: the first, NAME-0).")
@click.option(
    "-c", "command", metavar="COMMAND", help="Run COMMAND in the pod's environment and exit."
)
def shell(name: str, pod: str | None, command: str | None) -> None:
    """Open a shell ($SHELL, else bash) in a pod's environment.

    Locally: in its code tree, with its environment variables (not the service token) and the
    service's virtual environment first on PATH.
    """
    import os
    import shutil
    import subprocess

    from hotpod.services import shell as pod_shell

    try:
        target = pod_shell(name, pod)
    except HotpodError as exc:
        _fail(exc)
    program = os.environ.get("SHELL") or shutil.which("bash") or "/bin/sh"
    env = {**target.env, "HOTPOD_SHELL": target.pod}
    if command is not None:
        try:
            done = subprocess.run([program, "-c", command], cwd=target.cwd, env=env, check=False)
        except OSError as exc:
            _fail(HotpodError(f"could not run {program}: {exc}"))
        sys.exit(done.returncode)
    venv = f", venv {target.venv}" if target.venv else ""
    click.echo(
        f"hotpod: shell in pod {target.pod} ({target.cwd}{venv}); 'exit' leaves it", err=True
    )
    os.chdir(target.cwd)
    try:
        os.execvpe(program, [program], env)
    except OSError as exc:
        _fail(HotpodError(f"could not start {program}: {exc}"))


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
    from hotpod.module import RemoteApp, RemoteCls
    from hotpod.services import lookup

    args = _json_arg(args_json, "--args", list)
    kwargs = _json_arg(kwargs_json, "--kwargs", dict)
    try:
        handle = lookup(name)
    except HotpodError as exc:
        _fail(exc)
    if isinstance(handle, RemoteApp):
        raise click.UsageError(
            f"{name!r} is an app: send it HTTP requests (its handle's .get/.post, or its URL "
            f"with the token from 'hotpod token {name}')"
        )
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
@click.option(
    "--volumes",
    is_flag=True,
    help="Also delete the claims made for its kt.Volume(size=...) (Kubernetes; kept by default).",
)
def teardown(name: str | None, all_: bool, volumes: bool) -> None:
    """Delete a service and its pods (or all of them)."""
    from hotpod.services import teardown as teardown_services

    if bool(name) == all_:
        raise click.UsageError("give a service NAME or --all (not both)")
    if volumes and not name:
        raise click.UsageError("--volumes deletes the claims of one service: give its NAME")
    try:
        deleted = teardown_services(name, all=all_, volumes=volumes)
    except HotpodError as exc:
        _fail(exc)
    if not deleted and not all_:
        _fail(HotpodError(f"no service named {name!r}; 'hotpod list' shows what runs"))
    for n in deleted:
        click.echo(f"deleted {n}")
    if all_ and not deleted:
        click.echo("No services were running.")


@main.command()
@click.argument("name")
def token(name: str) -> None:
    """Print a service's token (a secret: what every pod endpoint but /health asks for)."""
    from hotpod.backends import get_backend

    try:
        click.echo(get_backend().get(name).token)
    except HotpodError as exc:
        _fail(exc)


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
