import os

from setuptools import find_namespace_packages, setup

here = os.path.abspath(os.path.dirname(__file__))
with open(os.path.join(here, "README.rst"), encoding="utf-8") as f:
    README = f.read()
with open(os.path.join(here, "CHANGES.rst"), encoding="utf-8") as f:
    CHANGES = f.read()

requires = [
    "pyramid>=2.0,<3",
    "APScheduler>=3.11.2,<3.12",  # the minor versions tested: daemon/aps.py uses 3.11 internals
    "kombu>=5.3,<6",
    "SQLAlchemy>=2.0,<3",
    "transaction>=3.0",
    "venusian>=3.0",
    "hupper>=1.10",
    "plaster_pastedeploy>=0.7",
    "zope.interface>=5",
]

extras = {
    # Kombu's Redis transport imports packaging too (Kombu 5.7 moved it into its own redis extra).
    "redis": ["redis>=4.5,<8.2", "packaging>=20"],
    "amqp": ["amqp>=5.1,<6"],
    "postgresql": ["psycopg[binary]>=3.1,<4"],
    # pyramid_scheduler.metrics: /metrics, and scheduler.metrics.listen in pscheduler.
    "metrics": ["prometheus_client>=0.17"],
    # pyramid_scheduler.dashboard: its health probe and metrics are pyramid_scheduler.metrics.
    "dashboard": ["prometheus_client>=0.17"],
    # pyramid_scheduler.tracing: spans for the enqueue and the run (the SDK is the application's choice).
    "otel": ["opentelemetry-api>=1.20"],
    "testing": [
        "pytest>=8",
        "pytest-timeout>=2.2",
        "pytest-xdist>=3.5",  # README: the fast tier on every core (-n 2)
        "WebTest>=3.0",
        "waitress>=3.0",
        "pyramid_tm>=2.5",
        "pyramid_retry>=2.1",  # tests/starter: the Pyramid starter's SQLAlchemy app
        "zope.sqlalchemy>=3.0",
        "alembic>=1.8",  # tests/test_alembic.py: autogenerate beside the scheduler's tables
        "hypothesis>=6.100",
        "ruff>=0.17.6,<0.18",  # the formatter's style is pinned by the minor version
        "mypy>=1.10",
        "playwright>=1.40",
        "beautifulsoup4>=4.12",
        "psutil>=5.9",  # the bench smoke test (tests/test_bench.py)
        "opentelemetry-sdk>=1.20",  # tests/test_tracing.py: the in-memory span exporter
    ],
    "docs": [
        "Sphinx>=7",
        "sphinxcontrib-autoprogram>=0.1.9",
    ],
    "demo": ["waitress>=3.0", "prometheus_client>=0.17"],  # the demo shows the dashboard
    # python -m bench (docs/performance.rst): Celery, Dramatiq and huey for comparison, pika
    # for the raw AMQP loop, matplotlib for the plots, psutil for the daemon's memory, py-spy
    # for the profile.
    "bench": [
        "celery[redis]>=5.3,<6",
        "dramatiq[redis]>=1.17,<3",
        "huey>=2.5,<4",
        "pika>=1.3",
        "matplotlib>=3.7",
        "psutil>=5.9",
        "py-spy>=0.3.14",
    ],
}
extras["testing"] += (
    extras["redis"] + extras["amqp"] + extras["postgresql"] + extras["docs"] + extras["metrics"] + extras["otel"]
)
extras["bench"] += extras["redis"] + extras["amqp"] + extras["postgresql"] + ["transaction>=3.0"]

setup(
    name="pyramid_scheduler",
    version="1.0.0.dev0",
    description="Asynchronous, deferred, interval and cron jobs for Pyramid applications",
    long_description=README + "\n\n" + CHANGES,
    long_description_content_type="text/x-rst",
    classifiers=[
        "Framework :: Pyramid",
        "Programming Language :: Python :: 3",
        "Programming Language :: Python :: 3 :: Only",
        "Programming Language :: Python :: 3.10",
        "Programming Language :: Python :: 3.11",
        "Programming Language :: Python :: 3.12",
        "Topic :: System :: Distributed Computing",
    ],
    keywords="pyramid scheduler cron jobs apscheduler kombu",
    license="MIT",
    license_files=["LICENSE"],
    # Namespace discovery: the dashboard's static/ folder (CSS, JS) is a package of data.
    packages=find_namespace_packages(include=["pyramid_scheduler", "pyramid_scheduler.*"]),
    include_package_data=True,
    package_data={
        "pyramid_scheduler": ["py.typed"],
        "pyramid_scheduler.demo": ["index.html", "login.html"],
        "pyramid_scheduler.dashboard": ["page.html"],
        "pyramid_scheduler.dashboard.static": ["*.css", "*.js"],
    },
    zip_safe=False,
    python_requires=">=3.10",
    install_requires=requires,
    extras_require=extras,
    entry_points={
        "console_scripts": ["pscheduler = pyramid_scheduler.scripts:main"],
        "paste.app_factory": ["demo = pyramid_scheduler.demo:main"],
    },
)
