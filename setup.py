"""Packaging for ssebridge: a Twisted bridge from Redis pub/sub to Server-Sent Events."""

from setuptools import Extension, find_packages, setup

setup(
    name="ssebridge",
    version="0.1.0",
    description="Hold thousands of Server-Sent Events clients for Python web apps, fed by Redis pub/sub.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=find_packages(include=["ssebridge", "ssebridge.*"]) + ["twisted.plugins"],
    package_data={
        "ssebridge": ["py.typed", "assets/*"],
        "ssebridge.publish": ["*.lua"],
        "twisted": ["plugins/ssebridge_plugin.py"],
    },
    include_package_data=True,
    install_requires=[
        # The hot path uses a few tcp.Connection internals behind ssebridge.takeover, which checks
        # them at import and falls back to plain writes; the range is what its contract test has passed on.
        "twisted>=24.3.0,<27",
        "txredisapi>=1.6.0",
        "klein>=24.8.0",
        "hiredis>=2.3.0",
        "prometheus_client>=0.20.0",
    ],
    extras_require={
        # ssebridge.publish.Publisher, for apps that publish events with ids.
        "publish": ["redis>=5.0"],
        "test": [
            "pytest>=8.0",
            "pytest-twisted>=1.14.3",
            "hypothesis>=6.100",
            "treq>=24.9.1",
            "flask>=3.0",
            "waitress>=3.0",
            "django>=4.2",
            "mypy>=1.10",
            "mypy-zope>=1.0.9",
            "ruff>=0.5",
            "redis>=5.0",
        ],
    },
    # The fan-out loop in C (ssebridge.fanout); optional: without a compiler the pure-Python loop is used.
    ext_modules=[Extension("ssebridge._fanout", ["ssebridge/_fanout.c"], optional=True)],
    entry_points={"console_scripts": ["ssebridge = ssebridge.runtime.command:main"]},
    classifiers=[
        "Framework :: Twisted",
        "Programming Language :: Python :: 3",
        "Programming Language :: Python :: 3.11",
    ],
)
