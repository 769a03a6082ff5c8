FROM python:3.11-slim
ENV APP_HOME="/srv/app" \
    PIP_NO_CACHE_DIR="1"
ENV GREETING="hello big world"
WORKDIR /srv/app
COPY files/4-requirements.txt /srv/app/requirements.txt
RUN pip install -r requirements.txt &&     echo "version 1.2" '$VERSION'
COPY files/6-src /srv/app/src
COPY files/7-config.yaml /srv/app/conf/config.yaml
COPY files/8-settings.toml /srv/app/conf/settings.toml
RUN python -c 'print('"'"'ready'"'"')'
EXPOSE 8000
CMD ["python", "-m", "app", "--port", "8000"]
