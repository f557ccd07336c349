"""The small Python web app of the benchmark: Flask on its own threaded server.
usage: app.py PORT"""
import sys

from flask import Flask

app = Flask(__name__)


@app.get("/items/<int:item>")
def item(item):
    return {"item": item, "name": f"item-{item}"}


@app.get("/")
def index():
    return "ok\n"


if __name__ == "__main__":
    app.run(host="127.0.0.1", port=int(sys.argv[1]), threaded=True)
