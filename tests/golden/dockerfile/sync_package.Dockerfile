FROM python:3.11
ENV PYTHONPATH=/opt/hotpod/packages${PYTHONPATH:+:$PYTHONPATH}
COPY packages/mylib /opt/hotpod/packages/mylib
COPY packages/hotpod_tinypkg /opt/hotpod/packages/hotpod_tinypkg
COPY packages/hotpod_tinymod.py /opt/hotpod/packages/hotpod_tinymod.py
