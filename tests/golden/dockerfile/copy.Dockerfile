FROM python:3.11
COPY files/1-configs /app/configs
COPY files/2-settings.toml /etc/app/settings.toml
COPY files/3-settings.toml relative/settings.toml
COPY ["files/4-my notes.txt", "/app/my notes.txt"]
COPY files/5-configs /data/
