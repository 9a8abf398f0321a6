"""`reasonrl serve` on a tiny Qwen2.5-VL: chat messages with `image_url` data: URLs give exactly the
engine's output for the same images, and every bad image is a 400 naming the content part (never a
crash, never a leak)."""

from __future__ import annotations

import base64
import io
import struct
import threading
import zlib

import httpx
import pytest
from PIL import Image
from serve_helpers import Server, no_leaks

from reasonrl.engine import LLM, LLMEngine, SamplingParams
from reasonrl.engine.server import ServeConfig
from reasonrl.models.tiny_vlm import make_vlm_checkpoint, make_vlm_tokenizer
from tests.models.vlm_common import CORPUS, noise_image

ENGINE = dict(device="cpu", kv_cache_memory=1 << 22, block_size=8, max_model_len=512)
LIMITS = dict(max_image_bytes=64 << 10, max_image_pixels=1 << 22, max_images_per_request=3)


def data_url(image: Image.Image, fmt: str = "PNG", media: str | None = None) -> str:
    buf = io.BytesIO()
    image.save(buf, fmt)
    return f"data:{media or 'image/' + fmt.lower()};base64,{base64.b64encode(buf.getvalue()).decode()}"


def chat(*parts, **extra) -> dict:
    content = [{"type": "image_url", "image_url": {"url": p}} if p.startswith(("data:", "http", "file")) else
               {"type": "text", "text": p} for p in parts]
    return {"messages": [{"role": "user", "content": content}], "max_tokens": 10, "temperature": 0,
            "ignore_eos": True, "return_token_ids": True, **extra}


def png_bomb(width: int, height: int) -> bytes:
    """A 1-bit grayscale PNG of width x height zeros, a few kB compressed, built row by row."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    z, row = zlib.compressobj(9), b"\x00" * (1 + (width + 7) // 8)
    idat = b"".join(z.compress(row) for _ in range(height)) + z.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    tok = make_vlm_tokenizer(CORPUS, vocab_size=384)
    return make_vlm_checkpoint(tmp_path_factory.mktemp("vlm_serve"), tok, seed=3, std=0.2)


@pytest.fixture(scope="module")
def srv(ckpt):
    server = Server(LLMEngine.from_pretrained(ckpt, **ENGINE), ServeConfig(served_model_name="vlm", **LIMITS))
    yield server
    server.stop()


@pytest.fixture
def client(srv):
    with httpx.Client(base_url=srv.url, timeout=60) as c:
        yield c


@pytest.fixture(scope="module")
def llm(ckpt):
    return LLM(ckpt, **ENGINE)


IMAGES = [noise_image(56, 84, 1), noise_image(90, 60, 2)]


def test_data_urls_give_the_engine_output_for_the_same_images(client, llm):
    body = chat("Describe both images.", data_url(IMAGES[0]), "and", data_url(IMAGES[1], "JPEG"))
    r = client.post("/v1/chat/completions", json=body)
    assert r.status_code == 200, r.text
    jpeg = Image.open(io.BytesIO(base64.b64decode(body["messages"][0]["content"][3]["image_url"]["url"].split(",")[1])))
    expected = llm.chat([{"role": "user", "content": [
        {"type": "text", "text": "Describe both images."}, {"type": "image", "image": IMAGES[0]},
        {"type": "text", "text": "and"}, {"type": "image", "image": jpeg}]}],
        SamplingParams(temperature=0, max_tokens=10, ignore_eos=True))[0]
    assert r.json()["choices"][0]["token_ids"] == expected.outputs[0].token_ids
    assert r.json()["usage"]["prompt_tokens"] == len(expected.prompt_ids)
    streamed = client.post("/v1/chat/completions", json={**body, "stream": True}).text
    assert '"finish_reason": "length"' in streamed and streamed.rstrip().endswith("data: [DONE]")


def test_same_image_with_detail_and_text_only_chats(client):
    with_detail = chat("What is in the picture?", data_url(IMAGES[0]))
    with_detail["messages"][0]["content"][1]["image_url"]["detail"] = "low"
    plain = chat("What is in the picture?", data_url(IMAGES[0]))
    ids = [client.post("/v1/chat/completions", json=b).json()["choices"][0]["token_ids"] for b in (with_detail, plain)]
    assert ids[0] == ids[1]
    assert client.post("/v1/chat/completions", json=chat("How many squares are there?")).status_code == 200


def test_tokenize_counts_an_image_chat_as_the_chat_completion_does(client, llm):
    """/tokenize refused image chats as text only ("'image_url' is not supported")."""
    body = chat("Describe both images.", data_url(IMAGES[0]), "and", data_url(IMAGES[1]))
    r = client.post("/tokenize", json={"messages": body["messages"]})
    assert r.status_code == 200, r.text
    expected = llm.chat([{"role": "user", "content": [
        {"type": "text", "text": "Describe both images."}, {"type": "image", "image": IMAGES[0]},
        {"type": "text", "text": "and"}, {"type": "image", "image": IMAGES[1]}]}],
        SamplingParams(temperature=0, max_tokens=1))[0]
    assert r.json()["tokens"] == expected.prompt_ids and r.json()["count"] == len(expected.prompt_ids)
    assert r.json()["count"] == client.post("/v1/chat/completions", json=body).json()["usage"]["prompt_tokens"]
    bad = client.post("/tokenize", json={"messages": chat("Look:", "https://example.com/cat.png")["messages"]})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "messages.0.content.1.image_url"


def test_tokenize_counts_images_from_their_sizes_without_preprocessing_pixels(client, monkeypatch):
    """/tokenize normalised, patchified and hashed every image only to count its tokens; the count comes
    from the image's size, as preprocessing resizes it (odd sizes included)."""
    body = chat("Two:", data_url(noise_image(45, 71, 1)), "and", data_url(noise_image(130, 33, 2)))
    want = client.post("/v1/chat/completions", json=body).json()["usage"]["prompt_tokens"]
    import reasonrl.engine.server.images as server_images

    def refuse(*args, **kwargs):
        raise AssertionError("preprocess called by /tokenize")

    monkeypatch.setattr(server_images, "preprocess", refuse)
    r = client.post("/tokenize", json={"messages": body["messages"]})
    assert r.status_code == 200 and r.json()["count"] == want, r.text
    r = client.post("/tokenize", json={"messages": chat("<|image_pad|>", data_url(noise_image(45, 71, 1)))["messages"]})
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages", r.text


def test_resume_a_chat_with_an_image_over_http(client):
    body = chat("What is in the picture?", data_url(IMAGES[1]), temperature=1.0, seed=4, logprobs=True)
    full = client.post("/v1/chat/completions", json=body).json()["choices"][0]
    ids, lps = full["token_ids"], [t["logprob"] for t in full["logprobs"]["content"]]
    resumed = client.post("/v1/chat/completions", json={**body, "resume": {"token_ids": ids[:4], "logprobs": lps[:4]}})
    assert resumed.json()["choices"][0]["token_ids"] == ids

def _corrupt_png() -> str:
    url = data_url(noise_image(40, 40, 5))
    head, b64 = url.split(",")
    raw = base64.b64decode(b64)
    return head + "," + base64.b64encode(raw[: len(raw) // 2]).decode()  # the header reads, the pixels do not


BAD = {  # name: (image URL or body change, the words the message must hold)
    "remote url": ("https://example.com/cat.png", "only data: URLs"),
    "file url": ("file:///etc/passwd", "only data: URLs"),
    "corrupt base64": ("data:image/png;base64,iVBORw0KGgo!!!!", "not valid base64"),
    "not base64": ("data:image/png,rawbytes", "must be base64"),
    "corrupt png": (_corrupt_png(), "corrupt"),
    "garbage png": ("data:image/png;base64," + base64.b64encode(b"\x89PNG not really" * 10).decode(), "not a valid PNG"),
    "png labelled jpeg": (data_url(noise_image(30, 30), "PNG", "image/jpeg"), "not a valid JPEG"),
    "gif": (data_url(noise_image(30, 30), "GIF"), "'image/gif' is not supported"),
    "text mime": ("data:text/plain;base64,aGVsbG8=", "'text/plain' is not supported"),
    "too big": (data_url(noise_image(200, 200, 6)), "larger than this server's limit of 65536 bytes"),
    "over pixel limit": ("data:image/png;base64," + base64.b64encode(png_bomb(3000, 3000)).decode(),
                         "3000x3000 pixels, more than this server's limit"),
    "decompression bomb": ("data:image/png;base64," + base64.b64encode(png_bomb(20000, 20000)).decode(), "pixels"),
    "aspect ratio": (data_url(noise_image(4, 900)), "aspect ratio"),
}


@pytest.mark.parametrize("name", list(BAD))
def test_bad_images_get_400_naming_the_part(client, name):
    url, words = BAD[name]
    r = client.post("/v1/chat/completions", json=chat("Look:", url))
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == "messages.0.content.1.image_url" and words in err["message"], err


def test_bad_parts_and_too_many_images(client):
    too_many = chat(*[data_url(noise_image(30, 30, i)) for i in range(4)])
    r = client.post("/v1/chat/completions", json=too_many)
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages.0.content.3"
    assert "more than 3 images" in r.json()["error"]["message"]
    image = "messages.0.content.0.image_url"
    for part, param in [({"type": "image_url", "image_url": "data:image/png;base64,AAAA"}, image),
                        ({"type": "image_url", "image_url": {"url": data_url(IMAGES[0]), "x": 1}}, image),
                        ({"type": "input_audio", "input_audio": {}}, "messages.0.content.0.type"),
                        ({"type": "text", "text": 3}, "messages.0.content.0")]:
        r = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": [part]}]})
        assert r.status_code == 400 and r.json()["error"]["param"] == param, (part, r.text)
    placeholder = chat("<|vision_start|><|image_pad|><|vision_end|>", data_url(IMAGES[0]))  # a second placeholder in text
    r = client.post("/v1/chat/completions", json=placeholder)
    assert r.status_code == 400 and "placeholder" in r.json()["error"]["message"]


def test_image_decoding_runs_off_the_event_loop(srv, client, monkeypatch):
    """/health answers while a request's image decoding is held up (it would hang were decoding on the loop)."""
    from reasonrl.engine.server import images

    decode, entered, gate = images.decode_data_url, threading.Event(), threading.Event()

    def held(*args):
        entered.set()
        gate.wait(30)
        return decode(*args)

    monkeypatch.setattr(images, "decode_data_url", held)
    result = []
    thread = threading.Thread(target=lambda: result.append(httpx.post(srv.url + "/v1/chat/completions", timeout=60,
                                                                      json=chat("Look:", data_url(IMAGES[0])))))
    thread.start()
    try:
        assert entered.wait(10)
        assert client.get("/health", timeout=5).status_code == 200
    finally:
        gate.set()
        thread.join()
    assert result[0].status_code == 200

def test_banner_names_the_image_limits(ckpt):
    from reasonrl.engine.server import banner

    engine = LLMEngine.from_pretrained(ckpt, **ENGINE)
    text = banner(engine, ServeConfig(**LIMITS))
    assert "images: data: URLs (PNG, JPEG), up to 3 per request, 65536 bytes and 4194304 pixels each" in text
    assert "up to 127 per request" in banner(engine, ServeConfig())  # 511 tokens / 4 tokens of a 56x56 image
    assert "(Qwen2_5_VLForConditionalGeneration)" in text  # it named the text decoder's, Qwen2ForCausalLM


def test_the_default_image_cap_is_what_a_prompt_holds(ckpt):
    """The cap was 512 // 4 = 128 images of 56x56, but 128 of them take all 512 tokens: the last was
    refused as taking "more than the context length 512"."""
    from reasonrl.engine.protocol import ChatMessage
    from reasonrl.engine.server.errors import APIError
    from reasonrl.engine.server.images import ChatImages
    from reasonrl.models import load_model

    images = ChatImages(load_model(ckpt), ServeConfig(), 512)

    def chat_of(n, side=56):
        part = {"type": "image_url", "image_url": {"url": data_url(Image.new("RGB", (side, side)))}}
        return [ChatMessage(role="user", content=[part] * n)]

    assert sum(n for *_, n in images.messages(chat_of(images.max_images))[1]) == 4 * images.max_images == 508
    with pytest.raises(APIError, match="more than 127 images"):
        images.messages(chat_of(128))
    with pytest.raises(APIError, match="take 512 tokens, at least the context length 512"):
        images.messages(chat_of(2, 448))  # 256 tokens each


def test_after_the_battery_alive_and_nothing_held(srv, client):
    """Runs last in this module."""
    assert client.get("/health").json() == {"status": "ok"}
    assert no_leaks(srv.engine)
    stats = client.get("/v1/stats").json()
    assert stats["image_requests"] == stats["image_embed_bytes"] == stats["image_pixel_bytes"] == 0
    assert stats["images_encoded"] > 0

