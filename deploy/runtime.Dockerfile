# hotpod's runtime image, for HOTPOD_K8S_BOOTSTRAP=init (docs/kubernetes.md, "The pod runtime
# in the image"): hotpod and its dependencies, installed with `pip install --target` into
# /opt/hotpod/runtime, which an init container copies into each pod. The pod's own image then
# needs no hotpod and no package index, but the same Python minor version and C library
# (glibc) as this image: build one per Python version and tag it so, e.g.
#
#   docker build -f deploy/runtime.Dockerfile --build-arg PYTHON_VERSION=3.11 \
#       -t my-team/hotpod-runtime:0.1.0-py3.11 deploy
#
# then HOTPOD_K8S_BOOTSTRAP=init HOTPOD_K8S_BOOTSTRAP_IMAGE=my-team/hotpod-runtime:0.1.0-py3.11.
# To install a wheel instead of the index's release, copy it into deploy/ and pass
# --build-arg HOTPOD_REQUIREMENT=/tmp/build/hotpod-0.1.0-py3-none-any.whl.
ARG PYTHON_VERSION=3.11
FROM python:${PYTHON_VERSION}-slim
ARG HOTPOD_REQUIREMENT=hotpod==0.1.0
COPY . /tmp/build
RUN python -m pip install --no-cache-dir --disable-pip-version-check \
        --target /opt/hotpod/runtime "${HOTPOD_REQUIREMENT}" \
    && rm -rf /tmp/build /opt/hotpod/runtime/bin \
    && PYTHONPATH=/opt/hotpod/runtime python -c 'import json, platform, sys, hotpod; json.dump({"python": "%d.%d" % sys.version_info[:2], "libc": " ".join(platform.libc_ver()), "hotpod": hotpod.__version__}, open("/opt/hotpod/runtime/hotpod-runtime.json", "w"))'
