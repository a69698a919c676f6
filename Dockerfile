# Capacitor router image.
#
#   docker build -t capacitor .
#   docker run -d -p 1040:1040 -v capacitor-data:/data -v capacitor-cache:/cache capacitor
#
# /data holds the configuration (config.yml, nodes.yml, rules/). When it has
# no config.yml at start, the default config.yml and the example rules are
# written there. /cache holds the spool. Any setting can be overridden with a
# CAPACITOR_* variable, for example CAPACITOR_MY_AE_TITLE=ROUTER.

FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md config.yml ./
COPY capacitor ./capacitor
COPY grammar ./grammar
COPY schemas ./schemas
COPY rules ./rules
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM python:3.11-slim
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl \
    && rm -rf /wheels \
    && groupadd --gid 1000 capacitor \
    && useradd --uid 1000 --gid 1000 --home-dir /data --no-create-home \
       --shell /usr/sbin/nologin capacitor \
    && mkdir -p /data /cache \
    && chown 1000:1000 /data /cache

USER 1000:1000
WORKDIR /data
ENV CAPACITOR_DATA=/data PYTHONUNBUFFERED=1
VOLUME ["/data", "/cache"]
# Store SCP, worklist, storage commitment, query/retrieve.
EXPOSE 1040 1041 1042 2763
# A C-ECHO to the router's own Store SCP (scpPort, myAeTitle from /data and
# the CAPACITOR_* variables). Add HEALTHCHECK to suppressLogAeTitles to keep
# it out of the DEBUG log.
HEALTHCHECK --interval=30s --timeout=15s --start-period=30s --retries=3 \
    CMD ["capacitor", "echo", "--aet", "HEALTHCHECK", "--timeout", "10"]
# docker stop waits 10 s before SIGKILL; shutdownTimeoutSeconds (8) fits in it.
STOPSIGNAL SIGTERM
ENTRYPOINT ["capacitor"]
CMD ["run", "--data", "/data", "--cache", "/cache", "--write-defaults"]
