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


def moduleImports():
    """
    Each rmux module's imports of other rmux modules, those done on first
    use inside a function included.
    """
    graph = {}
    for path in sorted(glob.glob(os.path.join(ROOT, "rmux", "**", "*.py"), recursive=True)):
        relative = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
        name = relative[: -len(".__init__")] if relative.endswith(".__init__") else relative
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read())
        found = set()
        for inner in ast.walk(tree):
            if isinstance(inner, ast.ImportFrom) and inner.module:
                if inner.module == "rmux":
                    found.update(f"rmux.{alias.name}" for alias in inner.names)
                else:
                    found.add(inner.module)
            elif isinstance(inner, ast.Import):
                found.update(alias.name for alias in inner.names)
        graph[name] = {m for m in found if m.startswith("rmux.")} - {name}
    return graph


class CycleTests(SynchronousTestCase):
    def test_noImportCycles(self):
        """
        No rmux module imports one that imports it back, directly or not,
        even on first use inside a function.
        """
        graph = moduleImports()
        for name in graph:
            package = name.rpartition(".")[0]
            if package in graph and package != "rmux":
                graph[name] = graph[name] - {package}
        cycles = []

        def visit(node, path):
            for target in sorted(graph.get(node, ())):
                if target in path:
                    cycles.append(path[path.index(target):] + [target])
                elif target in graph and len(path) < 20:
                    visit(target, path + [target])

        for name in sorted(graph):
            visit(name, [name])
        self.assertEqual(cycles, [])

    def test_serviceKnowsNothingOfWorkers(self):
        imports = moduleImports()["rmux.service"]
        self.assertEqual({m for m in imports if m.startswith(("rmux.workers", "rmux.application"))},
                         set())
