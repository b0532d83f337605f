"""The web demo: a Gradio app in the spirit of LLaVA's, on an in-process engine or a running server.

Upload or paste an image, ask about it, and read the answer as it streams; follow up, regenerate
the last answer or start over. A new image sent mid-conversation joins it (LLaVA-1.5 is trained
on one image per conversation, so answers about several are a bonus, not a promise).

Gradio must not phone home: analytics are off (set before Gradio is imported), there are no
share links, and the default theme's fonts ship with Gradio (no font CDN).
"""

from __future__ import annotations

import base64
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"  # before any `import gradio`

EXAMPLES_DIR = Path(__file__).resolve().parent.parent / "assets" / "examples"
EXAMPLES = [
    ("shapes.png", "What shapes do you see, and what colours are they?"),
    ("house.png", "Describe this scene."),
    ("chart.png", "Which bar is the tallest?"),
]


# Pictures in the chat as thumbnails, not full width.
CSS = "#chatbot .message img { max-height: 180px; width: auto !important; object-fit: contain; }"


class BackendError(Exception):
    """A problem to show the user (busy server, prompt too long, bad image...)."""


@dataclass
class Turn:
    role: str  # "user" | "assistant"
    text: str
    images: list[str] = field(default_factory=list)  # file paths, user turns only


class EngineBackend:
    """Generation in this process, on a shared `Engine` (requests from all users are batched)."""

    def __init__(self, engine, name: str) -> None:
        from llavakit.serve.limits import Limits

        self.engine, self.name, self.limits = engine, name, Limits()

    def stream(self, turns: list[Turn], *, temperature: float, top_p: float, max_tokens: int) -> Iterator[str]:
        from llavakit.engine import QueueFull, Request, SamplingParams
        from llavakit.serve.errors import APIError
        from llavakit.serve.images import decode_image

        messages, images = [], []
        for turn in turns:
            messages.append({"role": turn.role, "content": "<image>\n" * len(turn.images) + turn.text})
            try:  # the server's guards: format, bytes, pixels (bombs), long sides scaled down
                images += [decode_image(Path(p).read_bytes(), self.limits, "the image") for p in turn.images]
            except APIError as err:
                raise BackendError(err.message) from None
        try:
            params = SamplingParams(max_new_tokens=max_tokens, temperature=temperature, top_p=max(top_p, 1e-3))
            handle = self.engine.submit(Request(messages=messages, images=images, params=params))
        except QueueFull:
            raise BackendError("The model is busy; try again in a moment.") from None
        except ValueError as err:
            raise BackendError(str(err)) from None
        try:
            yield from handle
        finally:  # the user left or pressed stop: free the slot
            handle.cancel()


class ServerBackend:
    """A running `llavakit serve` (or any OpenAI-compatible server), through the OpenAI protocol."""

    def __init__(self, url: str, api_key: str | None = None, model: str | None = None) -> None:
        from openai import OpenAI

        self.client = OpenAI(base_url=url.rstrip("/") + ("" if url.rstrip("/").endswith("/v1") else "/v1"),
                             api_key=api_key or "none", max_retries=0, timeout=600)
        self.name = model or self.client.models.list().data[0].id

    def stream(self, turns: list[Turn], *, temperature: float, top_p: float, max_tokens: int) -> Iterator[str]:
        import openai

        messages = []
        for turn in turns:
            if turn.images:
                parts = [{"type": "image_url", "image_url": {"url": _data_url(p)}} for p in turn.images]
                messages.append({"role": turn.role, "content": [*parts, {"type": "text", "text": turn.text}]})
            else:
                messages.append({"role": turn.role, "content": turn.text})
        try:
            stream = self.client.chat.completions.create(model=self.name, messages=messages, stream=True,
                                                         temperature=temperature, top_p=top_p, max_tokens=max_tokens)
        except openai.APIStatusError as err:
            raise BackendError(_server_message(err)) from None
        except openai.APIConnectionError:
            raise BackendError("Cannot reach the server.") from None
        with stream:
            for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    yield chunk.choices[0].delta.content


def _server_message(err) -> str:
    body = err.body if isinstance(err.body, dict) else {}
    return str(body.get("message") or err.message)


def _data_url(path: str) -> str:
    """The file as it is (the server decodes the same bytes the in-process demo would)."""
    from PIL import Image

    try:
        with Image.open(path) as image:  # header only: the format for the media type
            kind = (image.format or "png").lower()
    except Exception:
        kind = "png"  # let the server say what is wrong with it
    return f"data:image/{kind};base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")


# ---- the page --------------------------------------------------------------------------------
def _chat_view(turns: list[Turn]) -> list[dict]:
    view = []
    for turn in turns:
        view += [{"role": "user", "content": {"path": p}} for p in turn.images]
        view.append({"role": turn.role, "content": turn.text})
    return view


def build_demo(backend, *, title: str = "llavakit"):
    """The Gradio Blocks app (call `.launch(...)` or use `launch_demo`)."""
    import gradio as gr

    def add_turn(state: dict, text: str, image: str | None):
        text = (text or "").strip()
        if not text and not image:
            raise gr.Error("Type a question (and optionally add an image).")
        new_image = image if image and image != state.get("sent_image") else None
        turns = list(state["turns"])
        turns.append(Turn("user", text or "Describe this image.", [new_image] if new_image else []))
        state = {"turns": turns, "sent_image": image or state.get("sent_image")}
        return state, _chat_view(turns), ""

    def answer(state: dict, temperature: float, top_p: float, max_tokens: int):
        turns = list(state["turns"])
        if not turns or turns[-1].role != "user":
            return
        reply = Turn("assistant", "")
        try:
            for delta in backend.stream(turns, temperature=float(temperature), top_p=float(top_p),
                                        max_tokens=int(max_tokens)):
                reply.text += delta
                yield state, _chat_view([*turns, reply])
        except BackendError as err:
            state = {**state, "turns": turns[:-1]}  # forget the unanswered question
            yield state, _chat_view(state["turns"])
            raise gr.Error(str(err)) from None
        yield {**state, "turns": [*turns, reply]}, _chat_view([*turns, reply])

    def drop_answer(state: dict):
        turns = list(state["turns"])
        if turns and turns[-1].role == "assistant":
            turns.pop()
        return {**state, "turns": turns}, _chat_view(turns)

    def clear():
        return {"turns": [], "sent_image": None}, [], None, ""

    examples = [[str(EXAMPLES_DIR / name), question] for name, question in EXAMPLES
                if (EXAMPLES_DIR / name).exists()]
    with gr.Blocks(title=title, analytics_enabled=False) as demo:
        gr.Markdown(f"## {title}\nUpload or paste an image, then ask about it. Model: `{backend.name}`")
        state = gr.State({"turns": [], "sent_image": None})
        # Created before the examples that fill it, shown in the chat column.
        question = gr.Textbox(placeholder="Ask about the image and press Enter", show_label=False, scale=6,
                              elem_id="question", render=False)
        with gr.Row():
            with gr.Column(scale=1):
                image = gr.Image(type="filepath", label="Image", sources=["upload", "clipboard"], height=300,
                                 elem_id="image-input")
                if examples:
                    gr.Examples(examples=examples, inputs=[image, question], label="Examples")
                with gr.Accordion("Parameters", open=False):
                    temperature = gr.Slider(0.0, 1.0, value=0.2, step=0.1, label="Temperature")
                    top_p = gr.Slider(0.0, 1.0, value=0.7, step=0.1, label="Top P")
                    max_tokens = gr.Slider(16, 1024, value=512, step=16, label="Max output tokens",
                                           elem_id="max-tokens")
            with gr.Column(scale=2):
                chatbot = gr.Chatbot(label="Chat", height=460, elem_id="chatbot", buttons=["copy"])
                with gr.Row():
                    question.render()
                    send = gr.Button("Send", variant="primary", scale=1, elem_id="send-btn")
                with gr.Row():
                    regenerate = gr.Button("Regenerate", elem_id="regenerate-btn")
                    clear_btn = gr.Button("Clear", elem_id="clear-btn")

        settings = [state, temperature, top_p, max_tokens]
        for trigger in (send.click, question.submit):
            trigger(add_turn, [state, question, image], [state, chatbot, question], queue=False).then(
                answer, settings, [state, chatbot])
        regenerate.click(drop_answer, [state], [state, chatbot], queue=False).then(answer, settings, [state, chatbot])
        clear_btn.click(clear, None, [state, chatbot, image, question], queue=False)
    return demo


def launch_demo(backend, *, host: str = "127.0.0.1", port: int = 7860, concurrency: int = 16) -> None:
    """Serve the demo until interrupted: local only by default, never through a share link."""
    import gradio as gr

    demo = build_demo(backend)
    demo.queue(default_concurrency_limit=concurrency)
    demo.launch(server_name=host, server_port=port, share=False, ssr_mode=False, show_error=True,
                max_file_size="20mb", allowed_paths=[str(EXAMPLES_DIR)], footer_links=[], mcp_server=False,
                enable_monitoring=False, theme=gr.themes.Default(), css=CSS, quiet=False)
