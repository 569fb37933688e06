"""
rmux as an operator meets it, in child processes: C{twistd rmux
--checkConfig}, logging under C{twistd -y}, the C{rmux} command
(C{python -m rmux}), and the wheel C{pip install .} would install.
"""

from __future__ import annotations

import os
import pickle
import shutil
import signal
import subprocess
import sys
import time

from twisted.python.filepath import FilePath
from twisted.trial.unittest import SkipTest, SynchronousTestCase

REPOSITORY = FilePath(__file__).parent().parent()
BIN = os.path.dirname(sys.executable)


def twistd() -> str:
    path = os.path.join(BIN, "twistd")
    if not os.path.exists(path):
        path = REPOSITORY.child(".venv").child("bin").child("twistd").path
    return path


def run(testCase, *arguments, pythonPath=REPOSITORY.path, timeout=60):
    """
    Run a program from an empty directory with C{pythonPath} (the working
    tree, unless given) on C{PYTHONPATH}, and return the finished process
    and the directory.
    """
    directory = testCase.mktemp()
    os.mkdir(directory)
    result = subprocess.run(
        list(arguments),
        cwd=directory,
        env=dict(os.environ, PYTHONPATH=pythonPath),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        timeout=timeout,
        text=True,
    )
    return result, directory


class TwistdTests(SynchronousTestCase):
    """
    C{twistd rmux --checkConfig}, and rmux's logging under twistd.
    """

    def test_checkConfigValid(self):
        """
        A valid configuration: exit status 0, one line saying what would
        run, and nothing else done (no pid file).
        """
        result, directory = run(
            self,
            twistd(),
            "-n",
            "rmux",
            "--checkConfig",
            "--socket=rmux.sock",
            "--tcpConnections=r1 r2:7000",
        )
        self.assertEqual(result.returncode, 0, result.stdout)
        self.assertEqual(
            result.stdout, "rmux: configuration OK: 1 listener: rmux.sock with 2 backends\n"
        )
        self.assertEqual(os.listdir(directory), [])

    def test_checkConfigInvalidFile(self):
        """
        An invalid file: exit status 1 and the error, naming the file and
        the field, without twistd's usage text.
        """
        path = FilePath(self.mktemp())
        path.setContent(b'[{"sockt": "/tmp/a.sock"}]')
        result, directory = run(
            self, twistd(), "-n", "rmux", "--checkConfig", f"--config={path.path}"
        )
        self.assertEqual(result.returncode, 1, result.stdout)
        self.assertEqual(
            result.stdout,
            f"rmux: configuration error: {path.path}: listener 1: sockt: unknown field "
            "(did you mean socket?)\n",
        )

    def test_tacLogging(self):
        """
        Under C{twistd -y}, a C{.tac} file that calls
        L{rmux.logs.configureLogging} gets rmux's filters in front of
        twistd's log: debug events dropped, repeats limited, and the count
        of the suppressed ones logged when twistd shuts down.
        """
        tac = FilePath(self.mktemp())
        tac.setContent(
            b"from twisted.application.service import Application\n"
            b"from twisted.internet import reactor\n"
            b"from twisted.logger import Logger\n"
            b"from rmux.config import BackendAddress, ListenerConfig, RmuxConfig\n"
            b"from rmux.logs import configureLogging\n"
            b"listener = ListenerConfig(socket='unused.sock',\n"
            b"    backends=(BackendAddress.fromString('localhost:6379'),))\n"
            b"configureLogging(RmuxConfig(listeners=(listener,)), reactor)\n"
            b"log = Logger(namespace='rmux.pool.BackendPool')\n"
            b"log.debug('a debug event')\n"
            b"for n in range(7):\n"
            b"    log.warn('backend {address} did not reply', address='r1:6379')\n"
            b"application = Application('rmux')\n"
            b"reactor.callWhenRunning(reactor.stop)\n"
        )
        result, directory = run(
            self, twistd(), "-n", "--pidfile=", "--logfile=-", "-y", tac.path
        )
        self.assertEqual(result.returncode, 0, result.stdout)
        self.assertNotIn("a debug event", result.stdout)
        self.assertEqual(result.stdout.count("backend r1:6379 did not reply"), 5 + 1)
        self.assertIn(
            "[rmux.pool.BackendPool#warn] 2 similar messages suppressed in the last 10 s; "
            "the last: backend r1:6379 did not reply",
            result.stdout,
        )


class CommandTests(SynchronousTestCase):
    """
    The C{rmux} command, as C{python -m rmux}: the console script runs the
    same L{rmux.cli.main}.
    """

    def rmux(self, *arguments):
        return run(self, sys.executable, "-m", "rmux", *arguments)[0]

    def test_help(self):
        """
        C{rmux --help} shows rmux's options under the command's own name,
        and the twistd options it passes on.
        """
        result = self.rmux("--help")
        self.assertEqual(result.returncode, 0, result.stdout)
        self.assertTrue(result.stdout.startswith("Usage: rmux [options]\n"), result.stdout)
        for text in ("--tcpConnections=", "--checkConfig", "Passed on to twistd:", "--pidfile="):
            self.assertIn(text, result.stdout)

    def test_version(self):
        result = self.rmux("--version")
        self.assertEqual(result.returncode, 0, result.stdout)
        self.assertTrue(result.stdout.startswith("rmux 0.1.0 (Twisted "), result.stdout)

    def test_checkConfig(self):
        result = self.rmux("--checkConfig", "--poolSize=-3")
        self.assertEqual(result.returncode, 1, result.stdout)
        self.assertEqual(
            result.stdout,
            "rmux: configuration error: --poolSize: must be a positive integer (0 means "
            "20), got '-3'\n",
        )

    def test_badOption(self):
        result = self.rmux("--bogus")
        self.assertEqual(result.returncode, 1, result.stdout)
        self.assertEqual(
            result.stdout, "rmux: option --bogus not recognized\nrmux: see rmux --help\n"
        )

    def test_runs(self):
        """
        C{rmux} runs rmux in the foreground until SIGTERM, through twistd:
        the twistd options it passes on take effect, and without
        C{--pidfile} there is no pid file.
        """
        directory = self.mktemp()
        os.mkdir(directory)
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "rmux",
                "--socket=rmux.sock",
                "--tcpConnections=127.0.0.1:1",
                "--logfile=rmux.log",
                "--healthInterval=20",
            ],
            cwd=directory,
            env=dict(os.environ, PYTHONPATH=REPOSITORY.path),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.addCleanup(process.kill)
        log = FilePath(directory).child("rmux.log")
        deadline = time.monotonic() + 20
        while b"is down" not in (log.getContent() if log.exists() else b""):
            if process.poll() is not None:
                self.fail(f"rmux ended: {process.stdout.read()}")
            self.assertLess(time.monotonic(), deadline, "rmux did not start")
            time.sleep(0.05)
        self.assertTrue(FilePath(directory).child("rmux.sock").exists())
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=20)
        self.assertEqual(output, "")
        text = log.getContent().decode("utf-8")
        self.assertIn("twistd", text)
        self.assertIn("backend 127.0.0.1:1 is down", text)
        self.assertIn("Server Shut Down.", text)
        self.assertEqual(sorted(os.listdir(directory)), ["rmux.log"])


class WheelTests(SynchronousTestCase):
    """
    What C{pip install .} installs: the wheel of the working tree, built
    and installed into a directory of its own.
    """

    def test_wheel(self):
        """
        The wheel holds the twistd plugin (and no plugin cache) and the
        C{rmux} console script; installed, the script runs, brings the
        plugin cache up to date, and twistd finds the plugin there.
        """
        work = FilePath(self.mktemp())
        source = work.child("source")
        source.makedirs()
        for name in ("setup.py", "README.md"):
            REPOSITORY.child(name).copyTo(source.child(name))
        shutil.copytree(
            REPOSITORY.child("rmux").path,
            source.child("rmux").path,
            ignore=shutil.ignore_patterns("__pycache__", "*.so"),
        )
        plugins = source.child("twisted").child("plugins")
        plugins.makedirs()
        REPOSITORY.child("twisted").child("plugins").child("rmux_plugin.py").copyTo(
            plugins.child("rmux_plugin.py")
        )
        plugins.child("dropin.cache").setContent(b"left by a test run")
        pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
        built = subprocess.run(
            pip + ["wheel", "--no-deps", "-w", work.child("dist").path, source.path],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=120,
        )
        if built.returncode and "setuptools" in built.stdout and (
            "No matching distribution" in built.stdout or "Could not find a version" in built.stdout
        ):
            raise SkipTest(f"pip cannot fetch setuptools to build with: {built.stdout}")
        self.assertEqual(built.returncode, 0, built.stdout)
        [wheel] = work.child("dist").globChildren("*.whl")

        import zipfile

        with zipfile.ZipFile(wheel.path) as archive:
            names = archive.namelist()
            entryPoints = archive.read(
                next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
            ).decode()
        self.assertIn("twisted/plugins/rmux_plugin.py", names)
        self.assertEqual([n for n in names if n.startswith("twisted/")], [
            "twisted/plugins/rmux_plugin.py"
        ])
        self.assertIn("rmux/__main__.py", names)
        self.assertIn("rmux/commands.json", names)
        self.assertIn("[console_scripts]\nrmux = rmux.cli:main", entryPoints)
        if REPOSITORY.child("rmux").globChildren("_speedups*.so"):
            # Where scripts/bootstrap could build the C accelerator, the
            # wheel is built with it too.
            self.assertTrue(
                [n for n in names if n.startswith("rmux/_speedups") and n.endswith(".so")], names
            )

        target = work.child("installed")
        installed = subprocess.run(
            pip + ["install", "--no-deps", "--no-index", "--target", target.path, wheel.path],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=120,
        )
        self.assertEqual(installed.returncode, 0, installed.stdout)
        # Where Twisted will load the plugin from: the new install, unless an
        # rmux installed in this virtualenv (scripts/bootstrap) shadows it.
        where, _ = run(
            self, sys.executable, "-c",
            "import twisted.plugins.rmux_plugin as m; print(m.__file__)",
            pythonPath=target.path,
        )
        plugins = FilePath(where.stdout.strip()).parent()
        cache = plugins.child("dropin.cache")
        if plugins == target.child("twisted").child("plugins"):
            self.assertFalse(cache.exists())
        script = target.child("bin").child("rmux")
        result, _ = run(self, script.path, "--help", pythonPath=target.path)
        self.assertEqual(result.returncode, 0, result.stdout)
        self.assertTrue(result.stdout.startswith("Usage: rmux [options]\n"), result.stdout)

        with open(cache.path, "rb") as f:
            self.assertIn("rmux_plugin", pickle.load(f))
        result, _ = run(
            self, twistd(), "-n", "rmux", "--checkConfig", "--socket=a.sock",
            pythonPath=target.path,
        )
        self.assertEqual(result.returncode, 0, result.stdout)
        self.assertIn("rmux: configuration OK", result.stdout)
