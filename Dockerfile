# One image for every Lockstep service: Airflow components, Spark master/worker, Dask scheduler/worker.
# Spark and Dask workers run the same feature kernel as the Airflow tasks, so they must have the same
# Python, pandas, pyarrow and `features` package: building them from one image is what guarantees it.
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    JAVA_HOME=/usr/lib/jvm/java-17-openjdk-amd64 \
    AIRFLOW_HOME=/opt/airflow \
    LOCKSTEP_LAKE=/lake

# Java 17 for Spark; tini reaps the processes Spark and Airflow fork.
RUN apt-get update \
 && apt-get install -y --no-install-recommends openjdk-17-jre-headless tini procps \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/lockstep
# Dependencies first (cached layer), then the code.
COPY setup.cfg pyproject.toml README.m[d] ./
COPY features/__init__.py features/__init__.py
COPY jobs/__init__.py jobs/__init__.py
RUN pip install --upgrade pip \
 && pip install -e . "psycopg2-binary>=2.9" "apache-airflow-providers-postgres"
COPY features features
COPY jobs jobs
COPY expectations expectations
COPY dags dags
COPY docker docker
RUN pip install --no-deps -e . \
 && useradd --create-home --uid 50000 lockstep \
 && mkdir -p /lake /opt/airflow \
 && chown -R lockstep /lake /opt/airflow

USER lockstep
ENTRYPOINT ["/usr/bin/tini", "--", "/opt/lockstep/docker/entrypoint.sh"]
CMD ["lockstep", "--help"]
