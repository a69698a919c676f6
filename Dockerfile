# Capacitor router image. Configuration lives in /data (config.yml,
# nodes.yml, rules/), the spool in /cache.
FROM python:3.11-slim

WORKDIR /opt/capacitor
COPY pyproject.toml README.md config.yml ./
COPY capacitor ./capacitor
COPY grammar ./grammar
COPY schemas ./schemas
COPY rules ./rules
RUN pip install --no-cache-dir . && rm -rf /opt/capacitor/build

RUN groupadd --gid 1000 capacitor \
    && useradd --uid 1000 --gid 1000 --home-dir /data --no-create-home capacitor \
    && mkdir -p /data /cache \
    && cp -r config.yml rules /data/ \
    && chown -R 1000:1000 /data /cache

USER 1000:1000
VOLUME ["/data", "/cache"]
EXPOSE 1040 1041 1042 2763
ENV CAPACITOR_DATA=/data
ENTRYPOINT ["capacitor"]
CMD ["run", "--data", "/data", "--cache", "/cache"]
