"""pytest-dashtam's hooks: options, configuration, markers, report lines and xdist glue. Hooks only.

Loaded through the `pytest11` entry point (`dashtam`), or with `-p pytest_dashtam.plugin` / `-p pytest_dashtam`.
The work happens in run.py (start, safety gate, template, clone, teardown) and isolation/ (per test); the
fixtures are in fixtures.py, registered below.

Phases, as in pytest-django: the test env file is exported in `pytest_load_initial_conftests`, before any
conftest imports the app; the configuration is validated in `pytest_configure` (a mistake is a
`pytest.UsageError`, exit 4); the stack is prepared after collection, only when a collected test needs it
(`--collect-only` and `--help` do no work); the databases are dropped and the stack stopped at session end.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import gc
import os
import sys
import warnings
from collections.abc import Generator
from typing import Any

import pytest

from pytest_dashtam import __version__, fixtures
from pytest_dashtam.config import OPTIONS, PluginConfig, build_config
from pytest_dashtam.environment import Handoff, export_env, restore_env
from pytest_dashtam.errors import ConfigError, SafetyError, SchemaError
from pytest_dashtam.fixtures import CONFIG_ERROR_KEY, RUN_KEY, STACK_FIXTURES
from pytest_dashtam.project import import_object
from pytest_dashtam.report import PHASES, describe_report, header_lines
from pytest_dashtam.run import DashtamRun
from pytest_dashtam.watchdog import Server, Watchdog

CONFIG_KEY = pytest.StashKey[PluginConfig]()
SAVED_ENV_KEY = pytest.StashKey[dict[str, "str | None"]]()
PROBLEMS_KEY = pytest.StashKey[list[str]]()
FROZE_GC_KEY = pytest.StashKey[bool]()
# The xdist controller: what its workers reported at the end (workeroutput), for the summary.
WORKER_REPORTS_KEY = pytest.StashKey[list[dict[str, Any]]]()
WATCHDOG_KEY = pytest.StashKey[Watchdog]()
_CURRENT_KEY = pytest.StashKey[dict[str, str]]()
# What the watchdog waits for a silent server when no --dashtam-timeout is given.
_DEFAULT_HANG_TIMEOUT = 30.0
ENTRY_POINT_NAME = "dashtam"
FIXTURES_PLUGIN_NAME = "dashtam-fixtures"


class DashtamTeardownWarning(pytest.PytestWarning):
    """Something the plugin could not undo at the end (a database it could not drop, a stack it could not
    stop): a warning, as pytest-django's, so `-W error::pytest_dashtam.plugin.DashtamTeardownWarning` can make
    it fail the run, and never a masked result."""


# --- registration ---------------------------------------------------------------------------------------


def pytest_plugin_registered(plugin: object, plugin_name: str, manager: pytest.PytestPluginManager) -> None:
    """Loaded by `-p pytest_dashtam.plugin` (or `-p pytest_dashtam`): keep the entry point from loading it twice.

    The fixtures live in their own module, registered beside this one.
    """
    if plugin is not sys.modules[__name__]:
        return
    if plugin_name != ENTRY_POINT_NAME:
        manager.set_blocked(ENTRY_POINT_NAME)
    if manager.get_plugin(FIXTURES_PLUGIN_NAME) is None:
        manager.register(fixtures, FIXTURES_PLUGIN_NAME)


# --- options --------------------------------------------------------------------------------------------


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("dashtam", "pytest-dashtam: the PostgreSQL + Redis test stack")
    for option in OPTIONS:
        help_text = f"{option.help} [env {option.env}, ini {option.ini}]"
        if option.kind == "flag":
            group.addoption(option.flag, action="store_true", default=None, dest=option.dest, help=help_text)
            parser.addini(option.ini, help=option.help, type="bool", default=None)
        elif option.kind == "list":
            group.addoption(option.flag, action="append", default=None, dest=option.dest, help=help_text)
            parser.addini(option.ini, help=option.help, type="args", default=None)
        else:
            group.addoption(option.flag, default=None, dest=option.dest, metavar=option.name.upper(), help=help_text)
            parser.addini(option.ini, help=option.help, default=None)


def _read_config(config: pytest.Config, namespace: Any) -> PluginConfig:
    cli = {o.name: getattr(namespace, o.dest, None) for o in OPTIONS}
    ini: dict[str, object | None] = {}
    for o in OPTIONS:
        value = config.getini(o.ini)
        ini[o.name] = None if value is None or value == [] else value
    return build_config(cli, os.environ, ini, config.rootpath)


def _explicitly_configured(config: pytest.Config, namespace: Any) -> bool:
    """Whether the user set any dashtam option; with none set, a missing env file just leaves the plugin idle."""
    if any(getattr(namespace, o.dest, None) is not None for o in OPTIONS):
        return True
    if any(o.env in os.environ for o in OPTIONS):
        return True
    return any(config.getini(o.ini) not in (None, []) for o in OPTIONS)


def _skip_work(namespace: Any) -> bool:
    return bool(getattr(namespace, "help", False) or getattr(namespace, "version", False))


def _runs_no_tests(namespace: Any) -> bool:
    """Runs that only list things: nothing to start (the guard still refuses every connection)."""
    return any(
        getattr(namespace, name, False)
        for name in ("collectonly", "showfixtures", "show_fixtures_per_test", "markers", "setupplan")
    )


def _xdist_controller(namespace: Any) -> bool:
    # Read before xdist's own pytest_cmdline_main turns -n into --dist=load: any -n above 0 distributes.
    numprocesses = getattr(namespace, "numprocesses", None)
    return bool(numprocesses) and str(numprocesses) != "0"


def _pure_checks(c: PluginConfig) -> None:
    """Every check that needs no server, before anything connects: a refusal is a UsageError (exit 4)."""
    from pytest_dashtam import safety

    violations = safety.check_config(c)
    if violations:
        raise pytest.UsageError("pytest-dashtam: " + "; ".join(v.message for v in violations))


def _load(config: pytest.Config, namespace: Any) -> None:
    """Read and check once, then open the stack: its URLs are the environment before any conftest runs."""
    if CONFIG_KEY in config.stash or CONFIG_ERROR_KEY in config.stash:
        return
    try:
        plugin_config = _read_config(config, namespace)
    except ConfigError as exc:
        if _explicitly_configured(config, namespace):
            raise pytest.UsageError(f"pytest-dashtam: {exc}") from None
        config.stash[CONFIG_ERROR_KEY] = exc
        return
    _pure_checks(plugin_config)
    config.stash[CONFIG_KEY] = plugin_config
    # The env file's values first (they win over the shell's), then the stack's URLs over them.
    config.stash[SAVED_ENV_KEY] = export_env(plugin_config.env_values)
    handoff = Handoff.from_env(os.environ)
    if handoff is not None:
        run = DashtamRun(
            plugin_config,
            role="worker",
            worker=os.environ["PYTEST_XDIST_WORKER"],
            worker_count=int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1),
            handoff=handoff,
        )
    elif _xdist_controller(namespace):
        count = namespace.numprocesses
        run = DashtamRun(plugin_config, role="controller", worker_count=count if isinstance(count, int) else 2)
    else:
        run = DashtamRun(plugin_config)
    config.stash[RUN_KEY] = run
    if _runs_no_tests(namespace) or (run.role == "worker" and handoff is None):
        run._install_guard()
        return
    # A run that dies before pytest's own cleanup (a conftest that fails to import) still takes its stack down.
    atexit.register(_finish_at_exit, run)
    run.open()
    if isinstance(run.error, KeyboardInterrupt):
        # Ctrl-C while the stack started. This hook runs before pytest's own interrupt handling exists (a
        # KeyboardInterrupt here is a traceback), and an import it cut short may have left a module half
        # made, so nothing more of the run may happen: take the stack down and end as pytest's interrupt does.
        with contextlib.suppress(Exception):
            run.finish()
        sys.stderr.write("!!! KeyboardInterrupt: pytest-dashtam was starting the test stack; it was taken down !!!\n")
        raise SystemExit(pytest.ExitCode.INTERRUPTED)
    _refuse_misconfigured(run)


# Errors of the user's configuration found only once the stack answers (an index the server lacks, a binary
# the option names, a settings class that does not import, two Alembic heads, a failing migration): like
# the checks that need no server, they stop the run with one line (exit 4) instead of erroring every test.
_CONFIGURATION_ERRORS = (ConfigError, SafetyError, SchemaError)


def _refuse_misconfigured(run: DashtamRun, error: BaseException | None = None) -> None:
    """A UsageError for a configuration error the run met (`error`, else the run's own), after taking down
    what it started.

    An xdist worker keeps the error for its tests instead: a UsageError there would crash the worker, and the
    controller already refused what it could see.
    """
    error = error if error is not None else run.error
    if run.role == "worker" or not isinstance(error, _CONFIGURATION_ERRORS):
        return
    with contextlib.suppress(Exception):
        run.finish()
    raise pytest.UsageError(f"pytest-dashtam: {error}") from None


def _finish_at_exit(run: DashtamRun) -> None:
    with contextlib.suppress(Exception):
        run.finish()


@pytest.hookimpl(tryfirst=True)
def pytest_load_initial_conftests(early_config: pytest.Config, parser: pytest.Parser, args: list[str]) -> None:
    if _skip_work(early_config.known_args_namespace):
        return
    _load(early_config, early_config.known_args_namespace)


# --- configuration --------------------------------------------------------------------------------------


def pytest_configure(config: pytest.Config) -> None:
    # Registered here, before pytest's unraisable-exception plugin registers its own cleanup (this hook runs
    # before the built-in plugins'), so it runs after that cleanup's gc.collect(): see pytest_runtestloop.
    config.add_cleanup(functools.partial(_unfreeze_gc, config))
    config.addinivalue_line(
        "markers",
        "dashtam_db(transaction=False): with transaction=True the test's commits are real; the tables it "
        "wrote are emptied and their sequences reset afterwards (pytest-dashtam)",
    )
    if _skip_work(config.option):
        return
    _load(config, config.option)  # a run started with pytest.main() and no initial conftests hook


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: Any) -> None:
    """xdist controller: keep what each worker reported about its database (its header lines, timings)."""
    report = getattr(node, "workeroutput", {}).get("dashtam_report")
    if report:
        node.config.stash.setdefault(WORKER_REPORTS_KEY, []).append(report)


def pytest_unconfigure(config: pytest.Config) -> None:
    run = config.stash.get(RUN_KEY, None)
    if run is not None and PROBLEMS_KEY not in config.stash:  # no session ran (an error before it)
        config.stash[PROBLEMS_KEY] = run.finish()
    saved = config.stash.get(SAVED_ENV_KEY, None)
    if saved is not None:
        restore_env(saved)
        del config.stash[SAVED_ENV_KEY]


# --- preparing the stack after collection -------------------------------------------------------------------


def _fixtures_used(items: list[pytest.Item]) -> set[str]:
    return {name for item in items for name in getattr(item, "fixturenames", ())}


@pytest.hookimpl(trylast=True)
def pytest_collection_finish(session: pytest.Session) -> None:
    """Prepare the stack once collection shows a test needs it; a failure is kept for those tests' errors."""
    config = session.config
    run = config.stash.get(RUN_KEY, None)
    if run is None or run.role == "controller" or _runs_no_tests(config.option):
        return
    used = _fixtures_used(session.items)
    if not STACK_FIXTURES.intersection(used):
        return
    if run.error is None and run.config.app is not None and "client" in used:
        try:
            import_object(run.config.app, "app")  # imported only: an app factory is called by the fixture
        except ConfigError as exc:
            _refuse_misconfigured(run, exc)  # before the template is built: a refused run creates nothing
    with contextlib.suppress(Exception):  # remembered by run: every test that needs the stack errors with it
        run.prepare()
    _refuse_misconfigured(run)
    if getattr(config, "workerinput", None) is None:
        reporter = config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.ensure_newline()
            for line in describe_report(run.report()):
                reporter.write_line(line)


def pytest_report_header(config: pytest.Config) -> list[str]:
    plugin_config = config.stash.get(CONFIG_KEY, None)
    if plugin_config is None:
        error = config.stash.get(CONFIG_ERROR_KEY, None)
        return [f"dashtam: {__version__}, idle: {error}"] if error is not None else []
    return header_lines(plugin_config, config.stash.get(RUN_KEY, None), verbose=config.get_verbosity() > 0)


# --- garbage collection during the run --------------------------------------------------------------------


@pytest.hookimpl(tryfirst=True)
def pytest_runtestloop(session: pytest.Session) -> None:
    """Freeze the objects that exist before the first test, so the garbage collector stops walking them.

    After collection and the stack's preparation the heap holds about 10^5 long-lived objects (pytest's
    items, SQLAlchemy, pydantic, asyncpg, the app). Every full collection walks them all again: pytest's
    own `gc.collect()` passes at the end (its unraisable-exception check, in `pytest_unconfigure` and in a
    cleanup: about 45 ms each here) and the interpreter's at exit. `gc.freeze()` moves them to the
    permanent generation, as CPython's docs suggest for a long-lived heap; garbage the tests make is still
    collected, and still reported by pytest's unraisable-exception check. Measured on the suite benchmark
    (200 tests): 2.29 s -> about 2.0 s a run.

    Also in the xdist controller, whose heap grows with every worker's reports (-n 2 on 2,000 tests:
    about 0.1 s). Only when nothing froze before (`gc.get_freeze_count() == 0`): an in-process pytester
    run inside a frozen session, or a program that manages freezing itself, is left alone.
    `_unfreeze_gc` undoes it.
    """
    config = session.config
    plugin_config = config.stash.get(CONFIG_KEY, None)
    if RUN_KEY not in config.stash or plugin_config is None or not plugin_config.gc_freeze:
        return
    if gc.get_freeze_count() != 0:
        return
    gc.freeze()
    config.stash[FROZE_GC_KEY] = True


def _unfreeze_gc(config: pytest.Config) -> None:
    """Undo pytest_runtestloop's freeze once pytest's last collection has run (a config cleanup).

    Unfrozen so that `pytest.main()` in a process that goes on (pytester's in-process runs, an IDE) does
    not keep the session's objects out of the collector's reach. What usually follows is interpreter exit,
    whose own full collection would walk the whole heap again for objects freed with the process anyway
    (about 0.1 s here): an exit handler freezes again just before it. pytest's unraisable-exception check
    has already run by then.
    """
    if not config.stash.get(FROZE_GC_KEY, False):
        return
    del config.stash[FROZE_GC_KEY]
    gc.unfreeze()
    atexit.unregister(gc.freeze)  # one handler however many sessions ran in this process
    atexit.register(gc.freeze)


# --- a server that stops answering stops the run (watchdog.py) ---------------------------------------------


@pytest.hookimpl(wrapper=True, specname="pytest_runtestloop")
def pytest_runtestloop_watchdog(session: pytest.Session) -> Generator[None, object, object]:
    """Ping the stack's servers while the tests run; one that stops answering interrupts the run."""
    config = session.config
    run = config.stash.get(RUN_KEY, None)
    prepared = run.prepared if run is not None else None
    if run is None or prepared is None:
        return (yield)
    running = config.stash[_CURRENT_KEY] = {"test": "the first test's setup"}
    watchdog = config.stash[WATCHDOG_KEY] = Watchdog(
        [
            Server.from_url("PostgreSQL", prepared.stack.postgres_url),
            Server.from_url("Redis", prepared.stack.redis_url),
        ],
        run.config.timeout or _DEFAULT_HANG_TIMEOUT,
        current=lambda: running["test"],
    )
    watchdog.start()
    try:
        return (yield)
    finally:
        watchdog.stop()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, Any]:
    """After a failure, a server that is gone stops the run there, with one line, not a traceback per test."""
    report = yield
    watchdog = item.config.stash.get(WATCHDOG_KEY, None)
    if report.failed and watchdog is not None and not item.session.shouldstop:
        problem = watchdog.check_now()
        if problem is not None:
            item.session.shouldstop = f"pytest-dashtam: {problem}"
    return report


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> None:
    running = item.config.stash.get(_CURRENT_KEY, None)
    if running is not None:
        running["test"] = item.nodeid


# --- the end ------------------------------------------------------------------------------------------------


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Drop this process's database, release its leases and stop what it started (after every fixture is
    torn down; in the xdist controller, after the workers are gone)."""
    config = session.config
    run = config.stash.get(RUN_KEY, None)
    if run is None:
        return
    watchdog = config.stash.get(WATCHDOG_KEY, None)
    problems = config.stash[PROBLEMS_KEY] = run.finish(servers_answer=watchdog is None or watchdog.fired is None)
    workeroutput = getattr(config, "workeroutput", None)
    if workeroutput is not None:
        report = run.report()
        if watchdog is not None and watchdog.fired:
            report["stopped"] = watchdog.fired  # a worker's summary is not shown: the controller says it
        workeroutput["dashtam_report"] = report
    for problem in problems:  # after everything was done: a warning turned error must not leave work undone
        warnings.warn(DashtamTeardownWarning(f"pytest-dashtam teardown: {problem}"), stacklevel=1)


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    """Teardown problems, the workers' databases under xdist, timings."""
    plugin_config = config.stash.get(CONFIG_KEY, None)
    if plugin_config is None:
        return
    run = config.stash.get(RUN_KEY, None)
    lines: list[str] = []
    reports: list[dict[str, Any]] = []
    if run is not None and run.role == "controller":
        lines.extend(f"dashtam: {note}" for note in run.notes)
        worker_reports: list[dict[str, Any]] = config.stash.get(WORKER_REPORTS_KEY, [])
        reports = sorted(worker_reports, key=lambda r: str(r.get("database", "")))
        for report in reports:
            lines.extend(describe_report(report)[1:] if "error" not in report else describe_report(report))
            if report.get("stopped"):
                lines.append(f"dashtam: {report['stopped']}")
    elif run is not None and (run.prepared is not None or run.error is not None):
        reports = [run.report()]
    if plugin_config.timings:
        for report in reports:
            phases: dict[str, float] = report.get("timings", {})
            parts = [f"{phase} {phases[phase] * 1000:.0f} ms" for phase in PHASES if phase in phases]
            who = f"{report.get('database', '')}: " if len(reports) > 1 else ""
            hit = " (template cache hit)" if report.get("cache_hit") else " (template built)"
            lines.append(f"dashtam timings: {who}{', '.join(parts)}{hit}")
    watchdog = config.stash.get(WATCHDOG_KEY, None)
    if watchdog is not None and watchdog.fired:
        lines.append(f"dashtam: {watchdog.fired}")
    if lines:
        terminalreporter.section("dashtam")
        for line in lines:
            terminalreporter.write_line(line)
