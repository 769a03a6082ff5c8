FROM python:3.11
RUN python -m pip install --no-cache-dir numpy 'pandas>=2' 'torch==2.3; python_version>'"'"'3.8'"'"''
COPY pip/mypkg /tmp/hotpod/pip/mypkg
COPY pip/tool-1.0-py3-none-any.whl /tmp/hotpod/pip/tool-1.0-py3-none-any.whl
RUN python -m pip install --no-cache-dir --force-reinstall '/tmp/hotpod/pip/mypkg[dev]' /tmp/hotpod/pip/tool-1.0-py3-none-any.whl
COPY pip/requirements.txt /tmp/hotpod/pip/requirements.txt
RUN python -m pip install --no-cache-dir -r /tmp/hotpod/pip/requirements.txt --index-url https://example.com/simple
