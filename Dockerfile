# The dagent agent as an image. Build it with one command, which makes the wheelhouse this file
# installs from (a build needs no package index):
#     bash examples/image/build.sh [--base IMAGE] [--tag TAG]
# Run it with the daemon's socket and the socket's group:
#     docker run -d --name dagent -v /var/run/docker.sock:/var/run/docker.sock \
#       --group-add "$(stat -c %g /var/run/docker.sock)" -e PREFECT_API_URL=... dagent:TAG
# BASE: any Debian image with python3 >= 3.10 (python:3.12-slim-bookworm, debian:bookworm plus python3, ...).
ARG BASE=python:3.12-slim-bookworm

FROM ${BASE} AS build
COPY wheels/ /wheels/
# --without-pip: Debian's python3 has no ensurepip; pip runs from its own wheel instead.
RUN python3 -m venv --without-pip /opt/dagent \
 && pip_wheel="$(ls /wheels/pip-*.whl | head -n 1)" \
 && /opt/dagent/bin/python "$pip_wheel/pip" install --no-index --find-links /wheels --no-cache-dir --no-compile \
      --disable-pip-version-check dagent \
 && /opt/dagent/bin/python -m compileall -q /opt/dagent/lib

FROM ${BASE}
COPY --from=build /opt/dagent /opt/dagent
# A user of its own (no login, no password); the docker socket's group comes at run time (--group-add).
# Written directly: a minimal Debian base may have no useradd.
RUN echo "dagent:x:10001:10001:dagent:/var/lib/dagent:/usr/sbin/nologin" >> /etc/passwd \
 && echo "dagent:x:10001:" >> /etc/group \
 && mkdir -p /var/lib/dagent && chown 10001:10001 /var/lib/dagent
ENV PATH=/opt/dagent/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
USER 10001:10001
WORKDIR /var/lib/dagent
# Asks /health when health.address is set (e.g. DAGENT_HEALTH__ADDRESS=0.0.0.0:8080); healthy otherwise.
HEALTHCHECK --interval=30s --timeout=10s --start-period=20s --retries=3 CMD ["dagent", "health"]
# SIGQUIT drains (the runs in flight finish), SIGTERM stops and leaves them to the next start.
STOPSIGNAL SIGTERM
ENTRYPOINT ["dagent"]
CMD ["start"]
