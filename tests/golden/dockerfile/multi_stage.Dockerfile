FROM golang:1.22 AS build
WORKDIR /src
COPY files/3-project /src
RUN go build -o /out/app .

FROM python:3.11-slim
COPY --from=build /out/app /usr/local/bin/app
RUN echo "built with go 1.22"
CMD ["app"]
