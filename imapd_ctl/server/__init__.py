"""The daemon's HTTP server: gunicorn's arbiter with a worker of our own.

Read top to bottom, a request goes
  serve      `imapd-ctl serve`: settings checked, sockets (systemd's or bound), gunicorn started;
  worker     the event loop of each worker process: accepts, schedules, keeps the budget;
  channel    one connection: TLS handshake, reading, writing, every deadline;
  framing    the bytes of a head and a body, refused when they are not exactly HTTP/1.1;
  task       in a thread: the whole request as a WSGI environ, the app, the reply's bytes;
and the reply goes back through worker (handed over) and channel (written as the client reads).
boot keeps a stop signal that reaches a worker before its handlers are set.
"""
