FROM python:3.11
WORKDIR /app
COPY files/2-app.py ./app.py
RUN python app.py
WORKDIR "sub dir"
