"""
The size limits rmux's code keeps, so that each piece stays one concern a
newcomer can read: the client protocol within 400 lines, no class over 450
(but twistd's options, a table of flags), no function over 100 except the
parser's unrolled hot loops, which say so in their docstrings.  And the
module dependencies that must stay one-way.
"""

import ast
import glob
import os

from twisted.trial.unittest import SynchronousTestCase

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: Classes allowed above the class limit, and why.
BIG_CLASSES = {("rmux/tap.py", "Options"): "twistd's table of options"}
HOT_LOOP = "deliberately unrolled"


def definitions():
    """
    Every class and function of rmux, with its file and length in lines.
    """
    for path in sorted(glob.glob(os.path.join(ROOT, "rmux", "**", "*.py"), recursive=True)):
        relative = os.path.relpath(path, ROOT)
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read())
        for node in ast.walk(tree):
            if isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                yield relative, node, node.end_lineno - node.lineno + 1


class SizeTests(SynchronousTestCase):
    def test_clientProtocol(self):
        (size,) = [size for path, node, size in definitions()
                   if node.name == "ClientProtocol" and path == "rmux/proxy.py"]
        self.assertLessEqual(size, 400)

    def test_classes(self):
        big = [(path, node.name, size) for path, node, size in definitions()
               if isinstance(node, ast.ClassDef) and size > 450
               and (path, node.name) not in BIG_CLASSES]
        self.assertEqual(big, [])

    def test_functions(self):
        """
        No function is over 100 lines, except hot loops that say in their
        docstring that they are unrolled on purpose.
        """
        long = [(path, node.name, size) for path, node, size in definitions()
                if not isinstance(node, ast.ClassDef) and size > 100
                and HOT_LOOP not in " ".join((ast.get_docstring(node) or "").split())]
        self.assertEqual(long, [])


class DependencyTests(SynchronousTestCase):
    def imports(self, relative):
        with open(os.path.join(ROOT, relative), encoding="utf-8") as f:
            tree = ast.parse(f.read())
        names = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module:
                names.add(node.module)
                names.update(f"{node.module}.{alias.name}" for alias in node.names)
            elif isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
        return names

    def test_lowerLayersDoNotImportUpper(self):
        """
        The pure layers never import the ones that serve clients or run
        processes; the registry of settings imports nothing of rmux at all.
        """
        upper = {"rmux.proxy", "rmux.service", "rmux.session", "rmux.local",
                 "rmux.application", "rmux.workers", "rmux.tap"}
        for module in ("resp", "commands", "hashing", "router", "auth", "stats", "settings",
                       "interfaces", "pool", "health"):
            found = {name for name in self.imports(f"rmux/{module}.py")
                     if any(name == u or name.startswith(u + ".") for u in upper)}
            self.assertEqual(found, set(), module)
        self.assertEqual(
            {name for name in self.imports("rmux/settings.py") if name.startswith("rmux")}
            - {"rmux", "rmux.logs"}, set())
