FROM python:3.11-slim
ENV PLAIN="dev" \
    EMPTY="" \
    SPACES="a b  c" \
    QUOTES="say \"hi\" and 'bye'" \
    BACKSLASH="C:\\path\\" \
    DOLLAR="\$HOME and \${USER} and \$\$" \
    UNICODE="héllo wörld"
ENV SECOND="2"
