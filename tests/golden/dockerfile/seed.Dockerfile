FROM pytorch/pytorch:2.0.0-cuda11.7-cudnn8-runtime
RUN python -m pip install --no-cache-dir transformers accelerate
ENV HF_TOKEN="..."
RUN apt-get update && apt-get install -y git
COPY files/4-configs /app/configs
