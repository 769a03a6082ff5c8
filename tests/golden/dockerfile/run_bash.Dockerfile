FROM ubuntu:24.04
RUN apt-get update
RUN apt-get install -y git curl
RUN cd /tmp && echo "$HOME" > home.txt
RUN ["/bin/sh", "-c", "set -e\nfor i in 1 2; do\n  echo $i\ndone"]
RUN ["/bin/sh", "-c", "echo trailing \\"]
RUN ["/bin/sh", "-c", "[\"looks\", \"like\", \"json\"]"]
