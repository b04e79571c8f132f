"""Local models: llama.cpp serving (xllamacpp), GGUF files, a torch Llama, and fine-tuning.

Data flow: :mod:`.train` fine-tunes with :mod:`.torch_model` and writes GGUF (:mod:`.gguf`);
:mod:`.serve` serves a GGUF over HTTP for a run. torch and xllamacpp are optional and imported late.
Usage: ``with llama_server(Path("models/ft-5x.gguf")) as url: ...``
"""
