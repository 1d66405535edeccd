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
import os
import sys
import warnings
from collections.abc import Generator
from typing import Any

import pytest

from pytest_dashtam import __version__, fixtures, gc_freeze
from pytest_dashtam.config import OPTIONS, PluginConfig, build_config
from pytest_dashtam.environment import export_env, restore_env
from pytest_dashtam.errors import ConfigError, SafetyError, SchemaError
from pytest_dashtam.fixtures import CONFIG_ERROR_KEY, RUN_KEY, STACK_FIXTURES
from pytest_dashtam.project import import_object
from pytest_dashtam.report import PHASES, describe_report, header_lines
from pytest_dashtam.run import DashtamRun
from pytest_dashtam.watchdog import DEFAULT_TIMEOUT, Watchdog

CONFIG_KEY = pytest.StashKey[PluginConfig]()
SAVED_ENV_KEY = pytest.StashKey[dict[str, "str | None"]]()
PROBLEMS_KEY = pytest.StashKey[list[str]]()
FROZE_GC_KEY = pytest.StashKey[bool]()
# The xdist controller: what its workers reported at the end (workeroutput), for the summary.
WORKER_REPORTS_KEY = pytest.StashKey[list[dict[str, Any]]]()
WATCHDOG_KEY = pytest.StashKey[Watchdog]()
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
    # -n is read before xdist's own pytest_cmdline_main turns it into --dist=load.
    run = config.stash[RUN_KEY] = DashtamRun.for_process(
        plugin_config, os.environ, getattr(namespace, "numprocesses", None)
    )
    if _runs_no_tests(namespace) or (run.role == "worker" and run.handoff is None):
        run._install_guard()
        return
    # A run that dies before pytest's own cleanup (a conftest that fails to import) still takes its stack down.
    atexit.register(_finish_at_exit, run)
    run.open()
    if isinstance(run.error, KeyboardInterrupt):
        # Ctrl-C while the stack started. This hook runs before pytest's own interrupt handling exists (a
        # KeyboardInterrupt here is a traceback), and an import it cut short may have left a module half
        # made, so nothing more of the run may happen: take the stack down and end as pytest's interrupt does.
        _take_down(run, "pytest-dashtam was starting the test stack")
        raise SystemExit(pytest.ExitCode.INTERRUPTED)
    _refuse_misconfigured(run)


def _take_down(run: DashtamRun | None, doing: str) -> None:
    """After Ctrl-C where pytest has no interrupt handling of its own: the stack down, one line."""
    if run is not None:
        with contextlib.suppress(Exception):
            run.finish()
    sys.stderr.write(f"!!! KeyboardInterrupt: {doing}; the test stack was taken down !!!\n")


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


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_load_initial_conftests(early_config: pytest.Config, parser: pytest.Parser, args: list[str]) -> Any:
    if not _skip_work(early_config.known_args_namespace):
        _load(early_config, early_config.known_args_namespace)
    try:
        return (yield)  # the project's conftests: they import the application, before pytest handles Ctrl-C
    except KeyboardInterrupt:
        _take_down(early_config.stash.get(RUN_KEY, None), "pytest was importing the project's conftest.py")
        raise SystemExit(pytest.ExitCode.INTERRUPTED) from None


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
    if WATCHDOG_KEY in config.stash:  # stopped in sessionfinish, unless the run ended before it
        config.stash[WATCHDOG_KEY].stop()
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
    if run.error is None and run.stack is not None:  # from here to the run's end, a hung server is caught
        watchdog = config.stash[WATCHDOG_KEY] = Watchdog.for_stack(run.stack, run.config.timeout or DEFAULT_TIMEOUT)
        watchdog.doing = "the stack's preparation (template, clone)"
        watchdog.start()
    with contextlib.suppress(Exception):  # remembered by run: every test that needs the stack errors with it
        run.prepare()
    fired = config.stash[WATCHDOG_KEY].fired if WATCHDOG_KEY in config.stash else None
    if fired is not None:
        run.stopped_answering(fired)
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
    """Freeze the objects that exist before the first test, so the garbage collector stops walking them
    (gc_freeze.py says why and when); `_unfreeze_gc` undoes it."""
    config = session.config
    plugin_config = config.stash.get(CONFIG_KEY, None)
    if RUN_KEY in config.stash and plugin_config is not None and plugin_config.gc_freeze and gc_freeze.freeze():
        config.stash[FROZE_GC_KEY] = True


def _unfreeze_gc(config: pytest.Config) -> None:
    """Undo pytest_runtestloop's freeze once pytest's last collection has run (a config cleanup)."""
    if config.stash.get(FROZE_GC_KEY, False):
        del config.stash[FROZE_GC_KEY]
        gc_freeze.unfreeze()


# --- a server that stops answering stops the run (watchdog.py) ---------------------------------------------


@pytest.hookimpl(wrapper=True, specname="pytest_runtestloop")
def pytest_runtestloop_watchdog(session: pytest.Session) -> Generator[None, object, object]:
    """While the tests run, a test still stuck on a hung server after its connections were severed is
    interrupted (before and after, severing alone frees the waits: an interrupt would cut teardown short)."""
    watchdog = session.config.stash.get(WATCHDOG_KEY, None)
    if watchdog is None:
        return (yield)
    watchdog.tests_begin()
    try:
        return (yield)
    finally:
        watchdog.end_of_tests()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, Any]:
    """A server that is gone or hung (seen after a failure, or by the watchdog) stops the run there, with one
    line, not a traceback per test."""
    report = yield
    watchdog = item.config.stash.get(WATCHDOG_KEY, None)
    problem = watchdog.after_report(report.failed) if watchdog is not None else None
    if problem is not None and not item.session.shouldstop:
        item.session.shouldstop = f"pytest-dashtam: {problem}"
    return report


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> None:
    watchdog = item.config.stash.get(WATCHDOG_KEY, None)
    if watchdog is not None:
        watchdog.doing = item.nodeid


# --- the end ------------------------------------------------------------------------------------------------


@pytest.hookimpl(wrapper=True, tryfirst=True, specname="pytest_sessionfinish")
def pytest_sessionfinish_interrupted(session: pytest.Session) -> Generator[None, None, None]:
    """Ctrl-C during the session's teardown (fixtures, summary, stopping the stack), which pytest does not
    catch there: the stack is taken down and the run ends interrupted with one line, not a traceback."""
    try:
        yield
    except KeyboardInterrupt:
        _take_down(session.config.stash.get(RUN_KEY, None), "during the session's teardown")
        session.exitstatus = pytest.ExitCode.INTERRUPTED


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Drop this process's database, release its leases and stop what it started (after every fixture is
    torn down; in the xdist controller, after the workers are gone)."""
    config = session.config
    run = config.stash.get(RUN_KEY, None)
    if run is None:
        return
    watchdog = config.stash.get(WATCHDOG_KEY, None)
    try:
        problems = config.stash[PROBLEMS_KEY] = run.finish(servers_answer=watchdog is None or watchdog.fired is None)
    finally:
        if watchdog is not None:
            watchdog.stop()
    workeroutput = getattr(config, "workeroutput", None)
    if workeroutput is not None:
        report = run.report()
        if watchdog is not None and watchdog.fired:
            report["stopped"] = watchdog.fired  # a worker's summary is not shown: the controller says it
            # Ended by the watchdog, not by a user's Ctrl-C: xdist would replace an interrupted worker with
            # a new one, which would wait on the same hung server; a worker that stopped is not replaced.
            workeroutput["shouldstop"] = workeroutput.get("shouldstop") or f"pytest-dashtam: {watchdog.fired}"
            if workeroutput.get("exitstatus") == pytest.ExitCode.INTERRUPTED:
                workeroutput["exitstatus"] = int(pytest.ExitCode.TESTS_FAILED)
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
            if "error" in report:  # the phases that ran before the stack failed, and that it failed
                lines.append(f"dashtam timings: {who}{', '.join([*parts, 'then not started (above)'])}")
                continue
            hit = " (template cache hit)" if report.get("cache_hit") else " (template built)"
            lines.append(f"dashtam timings: {who}{', '.join(parts)}{hit}")
    watchdog = config.stash.get(WATCHDOG_KEY, None)
    if watchdog is not None and watchdog.fired:
        lines.append(f"dashtam: {watchdog.fired}")
    if lines:
        terminalreporter.section("dashtam")
        for line in lines:
            terminalreporter.write_line(line)


# --- --dashtam-keep-failed: a failed test's database kept for debugging (isolation/keep.py) ------------------
# Self-contained: these hooks only read and add what the keeper collects; nothing above depends on them.

KEPT_KEY = pytest.StashKey[list[dict[str, str]]]()  # the xdist controller: what its workers kept


@pytest.hookimpl(wrapper=True, specname="pytest_runtest_makereport")
def pytest_runtest_makereport_keep_failed(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, Any]:
    """Each phase's report on the item (pytest's "making test result information available in fixtures"),
    so the fixtures' teardown knows the test failed; what was kept ends the teardown report, which the
    failure's output shows (and xdist carries to the controller)."""
    report = yield
    plugin_config = item.config.stash.get(CONFIG_KEY, None)
    if plugin_config is None or not plugin_config.keep_failed:
        return report
    reports = item.stash.setdefault(fixtures.PHASE_REPORTS_KEY, {})
    reports[report.when] = report
    keeper = item.config.stash.get(fixtures.KEEPER_KEY, None)
    if keeper is None or report.when != "teardown":
        return report
    setup = reports.get("setup")
    lines = keeper.report_lines(item.nodeid, shown=setup is None or not setup.failed)
    if lines:
        report.sections.append(("dashtam teardown: what the failed test left", "\n".join(lines)))
    return report


@pytest.hookimpl(specname="pytest_sessionfinish")
def pytest_sessionfinish_keep_failed(session: pytest.Session) -> None:
    """An xdist worker tells the controller what it kept (for the summary)."""
    keeper = session.config.stash.get(fixtures.KEEPER_KEY, None)
    workeroutput = getattr(session.config, "workeroutput", None)
    if keeper is not None and keeper.kept and workeroutput is not None:
        workeroutput["dashtam_kept"] = keeper.kept


@pytest.hookimpl(optionalhook=True, specname="pytest_testnodedown")
def pytest_testnodedown_keep_failed(node: Any, error: Any) -> None:
    kept = getattr(node, "workeroutput", {}).get("dashtam_kept")
    if kept:
        node.config.stash.setdefault(KEPT_KEY, []).extend(kept)


@pytest.hookimpl(trylast=True, specname="pytest_terminal_summary")
def pytest_terminal_summary_keep_failed(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    """One line at the end of the run naming the databases kept, and how to list and remove them."""
    from pytest_dashtam.report import kept_summary

    keeper = config.stash.get(fixtures.KEEPER_KEY, None)
    lines = kept_summary([*(keeper.kept if keeper is not None else ()), *config.stash.get(KEPT_KEY, [])])
    if lines:
        terminalreporter.section("dashtam: kept for debugging")
        for line in lines:
            terminalreporter.write_line(line)
