"""
Tests for L{rmux.settings}: the one registry of settings, and that what is
derived from it (the README's table, C{--help}, the validated objects'
defaults, reload's field sets) agrees with it.
"""

import dataclasses
import os

from twisted.trial.unittest import SynchronousTestCase

from rmux import reload, settings, tap
from rmux.config import FLAG_NAMES, ListenerConfig, RmuxConfig, fromFlags
from rmux.resp import RequestParser

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")
BEGIN = "<!-- The options table is rmux.settings's: regenerate it with python -m rmux.settings -->"
END = "<!-- end of the options table -->"


class ReadmeTests(SynchronousTestCase):
    def test_optionsTableIsTheRegistrys(self):
        """
        The README's options table is exactly what the registry makes of
        itself; after a change, C{python -m rmux.settings} prints the new one.
        """
        with open(README, encoding="utf-8") as f:
            text = f.read()
        self.assertIn(BEGIN, text)
        table = text.split(BEGIN, 1)[1].split(END, 1)[0].lstrip("\n")
        self.assertEqual(table, settings.markdownTable())


class DerivedTests(SynchronousTestCase):
    def test_listenerFieldsAreSettings(self):
        """
        Every field of a listener's configuration but its backends, their
        topology and a Sentinel group's sentinels (read from the backend
        settings: tcpConnections, unixConnections, cluster, sentinels,
        sentinelMaster) is a listener setting, with the setting's default.
        """
        fields = {f.name for f in dataclasses.fields(ListenerConfig)} - {
            "backends", "topology", "sentinels"}
        self.assertEqual(fields, {s.name for s in settings.listenerFields()})
        listener = ListenerConfig(backends=["r1:6379"])
        for setting in settings.listenerFields():
            expected = setting.default
            if setting.name == "healthTimeout":
                expected = listener.remoteConnectTimeout
            self.assertEqual(getattr(listener, setting.name), expected, setting.name)

    def test_globalFieldsAreSettings(self):
        fields = {f.name for f in dataclasses.fields(RmuxConfig)} - {"listeners", "configPath"}
        self.assertEqual(fields, {s.name for s in settings.globalFields()})
        config = RmuxConfig(listeners=[ListenerConfig(backends=["r1:6379"])])
        for setting in settings.globalFields():
            self.assertEqual(getattr(config, setting.name), setting.default, setting.name)

    def test_flagsAreSettings(self):
        """
        C{--help} has one option per flag setting, and C{fromFlags} takes
        each of them.
        """
        options = tap.Options()
        names = {flag[0] for flag in options.optFlags} | {
            parameter[0] for parameter in options.optParameters}
        self.assertEqual(names, {s.name for s in settings.flagSettings()})
        self.assertEqual(set(FLAG_NAMES), names - {"checkConfig"})

    def test_noFlagsMeansTheDefaults(self):
        """
        The defaults C{--help} starts from give the registry's defaults.
        """
        options = tap.Options()
        options.parseOptions(["--tcpConnections=r1:6379"])
        listener = options.config.listeners[0]
        self.assertEqual(listener, fromFlags({"tcpConnections": "r1:6379"}).listeners[0])
        self.assertEqual(listener.clientOutputLimit, settings.default("clientOutputLimit"))

    def test_parserLimits(self):
        parser = RequestParser()
        for name in ("maxBulkLength", "maxArguments", "maxInlineLength"):
            self.assertEqual(getattr(parser, name), settings.default(name))

    def test_reloadFieldSets(self):
        """
        What a reload refuses to change and never shows are the settings'
        own answers.
        """
        self.assertEqual(
            set(reload.RESTART_FIELDS),
            {"socket", "socketMode", "socketOwner", "host", "port", "maxProcesses", "commands",
             "tlsPort", "tlsCertFile", "tlsKeyFile", "tlsAuthClients"})
        self.assertEqual(reload._SECRET_FIELDS, {"requirepass", "users"})


class RuleTests(SynchronousTestCase):
    """
    What flag and file errors say a setting accepts, from what 0 means.
    """

    def rule(self, name):
        return settings.BY_NAME[name].rule()

    def test_rules(self):
        self.assertEqual(self.rule("poolSize"), "a positive integer (0 means 20)")
        self.assertEqual(self.rule("healthInterval"), "a positive integer (ms; 0 means 100)")
        self.assertEqual(
            self.rule("healthTimeout"), "a positive integer (ms; 0 means remoteConnectTimeout)")
        self.assertEqual(self.rule("remoteReadTimeout"), "a non-negative integer (ms)")
        self.assertEqual(self.rule("pinnedWait"), "a non-negative integer (ms)")
        self.assertEqual(self.rule("maxProcesses"), "a non-negative integer")
        self.assertEqual(self.rule("port"), "an integer from 0 to 65535")
        self.assertEqual(
            self.rule("clientOutputLimit"),
            "a non-negative number of bytes, such as 65536 or 64kb (0 means unlimited)")
        self.assertEqual(
            self.rule("maxInlineLength"),
            "a positive number of bytes, such as 65536 or 64kb (0 means 64kb)")

    def test_bounds(self):
        """
        An effective value may be 0 only where 0 means itself, directly or
        through the setting it falls back to.
        """
        lows = {s.name: s.low for s in settings.SETTINGS if s.kind in settings.INTEGER_KINDS}
        self.assertEqual(
            sorted(name for name, low in lows.items() if low == 0),
            sorted(["port", "tlsPort", "maxProcesses", "pinnedWait", "startupWait", "localTimeout",
                    "localReadTimeout", "localWriteTimeout", "idleTimeout", "clusterRetryTime",
                    "clientOutputLimit", "pubsubOutputLimit", "pubsubOutputSoftLimit",
                    "pubsubOutputSoftTime", "clientQueryBufferLimit", "queryBuffersLimit",
                    "shutdownTimeout", "statsPort", "metricsPort"]))

    def test_shownDefaults(self):
        shown = {s.name: s.shownDefault() for s in settings.SETTINGS}
        self.assertEqual(
            (shown["socketMode"], shown["maxBulkLength"], shown["clientOutputLimit"]),
            ("0666", "512mb", "256mb"))
        self.assertEqual(settings.showSize(1000), "1000")
