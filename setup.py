"""
Installs the rmux package, its twistd plugin and the C{rmux} command.

The plugin module lives in Twisted's C{twisted.plugins} namespace package,
which must not get an C{__init__.py} of ours: that would hide Twisted's own
plugins.  Listing C{twisted.plugins} as a package installs its one module,
C{rmux_plugin.py}, and nothing else from that directory: in particular not
a C{dropin.cache} left there by a test run, which would replace Twisted's
own cache of every installed plugin.  That cache is out of date after the
install, and no step of a wheel install can regenerate it; see
L{rmux.cli.refreshPluginCache} for what takes care of it.

The C accelerator C{rmux._speedups} is optional: where it cannot be built
(no compiler, no Python headers) the install goes on without it, and rmux
uses its pure-Python parser with hiredis.  C{RMUX_NO_SPEEDUPS=1} skips it.
"""

import os
import re

from setuptools import Extension, setup

HERE = os.path.dirname(os.path.abspath(__file__))


def read(*path):
    with open(os.path.join(HERE, *path), encoding="utf-8") as f:
        return f.read()


# The version is rmux.__version__, read rather than imported: importing
# rmux here would need its dependencies before they are installed.
VERSION = re.search(r'^__version__ = "([^"]+)"', read("rmux", "__init__.py"), re.M).group(1)

EXTENSIONS = [] if os.environ.get("RMUX_NO_SPEEDUPS") else [
    Extension("rmux._speedups", ["rmux/_speedups.c"], optional=True),
]

setup(
    name="rmux",
    version=VERSION,
    description="A Redis connection pooler and key-hashing multiplexer on Twisted",
    long_description=read("README.md") if os.path.exists(os.path.join(HERE, "README.md")) else "",
    long_description_content_type="text/markdown",
    packages=["rmux", "rmux.config", "rmux.workers", "twisted.plugins"],
    package_data={"rmux": ["*.json"]},
    ext_modules=EXTENSIONS,
    entry_points={"console_scripts": ["rmux = rmux.cli:main"]},
    python_requires=">=3.10",
    install_requires=[
        # rmux's transports use Twisted's write buffer (see rmux.transport);
        # CI tests both ends of this range.
        # The tls extra (pyOpenSSL, service_identity): rediss:// backends.
        "Twisted[tls]>=23.8,<27",
        "hiredis>=2.0",
        "prometheus-client>=0.17",
        "zope.interface>=5",
    ],
    extras_require={
        "test": ["redis>=5", "txredisapi>=1.4", "hypothesis>=6"],
    },
    classifiers=[
        "Development Status :: 4 - Beta",
        "Environment :: No Input/Output (Daemon)",
        "Framework :: Twisted",
        "Intended Audience :: System Administrators",
        "Operating System :: POSIX",
        "Programming Language :: Python :: 3",
        "Programming Language :: Python :: 3 :: Only",
        "Programming Language :: Python :: 3.10",
        "Programming Language :: Python :: 3.11",
        "Programming Language :: Python :: 3.12",
        "Programming Language :: Python :: 3.13",
        "Topic :: Database",
        "Topic :: System :: Networking",
    ],
)
