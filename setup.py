"""
Installs the rmux package and its twistd plugin.

The plugin module lives in Twisted's C{twisted.plugins} namespace package,
which must not get an C{__init__.py} of ours: that would hide Twisted's own
plugins.
"""

from setuptools import setup

setup(
    name="rmux",
    version="0.1.0",
    description="A Redis connection pooler and key-hashing multiplexer on Twisted",
    long_description=open("README.md").read() if __import__("os").path.exists("README.md") else "",
    long_description_content_type="text/markdown",
    packages=["rmux", "twisted.plugins"],
    package_data={"rmux": ["*.json"], "twisted": ["plugins/rmux_plugin.py"]},
    python_requires=">=3.10",
    install_requires=[
        "Twisted>=23.8",
        "hiredis>=2.0",
        "zope.interface>=5",
    ],
    extras_require={
        "test": ["redis>=5", "txredisapi>=1.4", "hypothesis>=6"],
    },
)
