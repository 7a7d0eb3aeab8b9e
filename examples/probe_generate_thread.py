"""Diagnostic: generate() in the main thread vs in a worker thread, with and without capture (ms/token, 256 tokens)."""

import threading
import time

import torch

from attrib.capture import capture_generate
from attrib.shapes import make_example
from attrib.streaming import Attributor

a = Attributor.load()
ex = make_example("test", 0)
x = a.loaded.build(ex.image(), ex.question.text)
asg = a.assignment(a.partition(ex.image()), x)
kw = dict(max_new_tokens=256, min_new_tokens=256, do_sample=False)


def cap():
    with torch.inference_mode():
        capture_generate(a.model, x, asg, decode=a.loaded.decode_raw, **kw)


def plain():
    with torch.inference_mode():
        a.model.generate(**x, **kw)


def in_thread(f):
    t = threading.Thread(target=f)
    t.start()
    t.join()


for name, f in [
    ("plain", plain),
    ("cap", cap),
    ("plain-thread", lambda: in_thread(plain)),
    ("cap-thread", lambda: in_thread(cap)),
    ("plain", plain),
    ("cap", cap),
    ("plain-thread", lambda: in_thread(plain)),
    ("cap-thread", lambda: in_thread(cap)),
]:
    t = time.perf_counter()
    f()
    print(name, round((time.perf_counter() - t) / 256 * 1e3, 2), "ms/tok")
print(torch.get_num_threads())
n = torch.get_num_threads()


def in_thread2(f):
    def g():
        torch.set_num_threads(n)
        f()

    t = threading.Thread(target=g)
    t.start()
    t.join()


for name, f in [
    ("plain-thread-set", lambda: in_thread2(plain)),
    ("cap-thread-set", lambda: in_thread2(cap)),
    ("plain", plain),
    ("plain-thread-set", lambda: in_thread2(plain)),
    ("cap-thread-set", lambda: in_thread2(cap)),
]:
    t = time.perf_counter()
    f()
    print(name, round((time.perf_counter() - t) / 256 * 1e3, 2), "ms/tok")
