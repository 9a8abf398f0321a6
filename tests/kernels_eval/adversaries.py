"""Adversarial answers to the `vector_add` task, each with the verdict the evaluator must give.

Each is a whole module, as a model would write it. Those that also need the test's own
values (a file name, a port) take them through str.format."""

KERNEL = '''
import torch, triton, triton.language as tl

@triton.jit
def _add(x_ptr, y_ptr, out_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    tl.store(out_ptr + offs, tl.load(x_ptr + offs, mask=mask) + tl.load(y_ptr + offs, mask=mask), mask=mask)

def _triton_add(x, y, out):
    _add[(triton.cdiv(x.numel(), 1024),)](x, y, out, x.numel(), BLOCK=1024)
    return out
'''

ADVERSARIES = {
    "no_op": ("wrong_output", KERNEL + '''
def vector_add(x, y):
    pass
'''),
    "constant": ("wrong_output", KERNEL + '''
def vector_add(x, y):
    return _triton_add(torch.zeros_like(x), torch.zeros_like(y), torch.empty_like(x))
'''),
    "input_mutation": ("mutated_input", KERNEL + '''
def vector_add(x, y):
    return _triton_add(x, y, x)  # the sum is right, written over x
'''),
    "cache_by_shape": ("wrong_output", KERNEL + '''
_seen = dict()

def vector_add(x, y):
    key = (tuple(x.shape), x.dtype)
    if key not in _seen:
        _seen[key] = _triton_add(x, y, torch.empty_like(x))
    return _seen[key]
'''),
    "pytorch_instead": ("no_kernel", '''
import torch

def vector_add(x, y):
    return x + y
'''),
    "import_reference": ("forbidden", KERNEL + '''
def vector_add(x, y):
    from reasonrl.envs.kernels.suite import get_task
    return get_task("vector_add").reference(x, y)
'''),
    "read_expert": ("forbidden", KERNEL + '''
def vector_add(x, y):
    source = open({expert_path!r}).read()
    namespace = {{}}
    exec(source, namespace)
    return namespace["vector_add"](x, y)
'''),
    "patch_tests_and_timers": ("wrong_output", KERNEL + '''
import time
torch.allclose = lambda *a, **k: True
torch.equal = lambda *a, **k: True
torch.testing.assert_close = lambda *a, **k: None
time.perf_counter = lambda: 0.0
time.perf_counter_ns = lambda: 0

def test_vector_add():
    return True

def compare(*args, **kwargs):
    return None

result_gold = {{}}

def vector_add(x, y):
    return _triton_add(x, y, torch.empty_like(x)) * 2
'''),
    "fork_bomb": ("forbidden", KERNEL + '''
import os

def vector_add(x, y):
    while True:
        os.fork()
'''),
    "subprocess": ("forbidden", KERNEL + '''
import subprocess

def vector_add(x, y):
    subprocess.run(["sh", "-c", "echo escaped > {outside_path}"])
    return _triton_add(x, y, torch.empty_like(x))
'''),
    "shell_true": ("forbidden", KERNEL + '''
import subprocess

def vector_add(x, y):
    subprocess.run("echo escaped > {outside_path}", shell=True)
    return _triton_add(x, y, torch.empty_like(x))
'''),
    "os_system": ("forbidden", KERNEL + '''
import os

def vector_add(x, y):
    os.system("echo escaped > {outside_path}")
    return _triton_add(x, y, torch.empty_like(x))
'''),
    "write_outside": ("forbidden", KERNEL + '''
def vector_add(x, y):
    try:
        with open({outside_path!r}, "w") as f:
            f.write("escaped")
    except OSError:
        pass  # even a candidate that hides the failure is caught
    return _triton_add(x, y, torch.empty_like(x))
'''),
    "socket": ("forbidden", KERNEL + '''
import socket

def vector_add(x, y):
    try:
        socket.create_connection(("127.0.0.1", {port}), timeout=2).sendall(b"leak")
    except OSError:
        pass
    return _triton_add(x, y, torch.empty_like(x))
'''),
    "ctypes_fork": ("forbidden", KERNEL + '''
import ctypes

def vector_add(x, y):
    ctypes.CDLL(None).fork()
    return _triton_add(x, y, torch.empty_like(x))
'''),
    "infinite_loop": ("timeout", KERNEL + '''
def vector_add(x, y):
    while True:
        pass
'''),
    "memory_bomb": ("runtime_error", KERNEL + '''
def vector_add(x, y):
    hog = bytearray(64 << 30)  # past the address-space limit: refused at once, never paged in
    return _triton_add(x, y, torch.empty_like(x))
'''),
    "exit_early": ("crashed", KERNEL + '''
import os

def vector_add(x, y):
    os._exit(0)
'''),
    # writes its own result file (device "meta" tensors, the right number of cases) and exits: the
    # parent's comparison raised, and the environment zeroed the whole batch's rewards
    "forged_result": ("crashed", KERNEL + '''
import os

def vector_add(x, y):
    m = torch.empty(x.shape, device="meta")
    torch.save({{"stage": "done", "outputs": [m] * {cases}, "inputs_after": [], "launches": [1] * {cases},
                "violations": [], "layers": []}}, ".result.pt")
    os._exit(0)
'''),
    "syntax_error": ("import_error", "def vector_add(x, y)\n    return x\n"),
    "wrong_name": ("missing_entry", KERNEL + '''
def add(x, y):
    return _triton_add(x, y, torch.empty_like(x))
'''),
}
