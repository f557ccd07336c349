"""An aiohttp app for tracer's end-to-end tests of in-process links on an event loop.

usage: aiohttp_app.py PORT DOWNSTREAM_PORT
GET /call   asks the downstream for /inside, then answers (the call belongs to the request)
GET /hook   answers at once, then asks the downstream for /webhook 150 ms later (deferred work:
            the call belongs to no request in flight when it is made)
GET /slow   answers after 800 ms
"""
import asyncio
import sys

from aiohttp import ClientSession, web

PORT, DOWNSTREAM = int(sys.argv[1]), int(sys.argv[2])
SESSION = web.AppKey("session", ClientSession)
tasks = set()


async def get(session, path):
    async with session.get(f"http://127.0.0.1:{DOWNSTREAM}{path}") as resp:
        await resp.read()
        return resp.status


async def call(request):
    status = await get(request.app[SESSION], "/inside")
    return web.Response(text=f"called {status}\n")


async def hook(request):
    async def later():
        await asyncio.sleep(0.15)
        await get(request.app[SESSION], "/webhook")

    task = asyncio.create_task(later())
    tasks.add(task)
    task.add_done_callback(tasks.discard)
    return web.Response(text="accepted\n")


async def slow(request):
    await asyncio.sleep(0.8)
    return web.Response(text="slow\n")


async def session(app):
    app[SESSION] = ClientSession()
    yield
    await app[SESSION].close()


app = web.Application()
app.cleanup_ctx.append(session)
app.add_routes([web.get("/call", call), web.get("/hook", hook), web.get("/slow", slow)])
web.run_app(app, host="127.0.0.1", port=PORT, print=None, access_log=None)
