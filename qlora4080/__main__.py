from .cli import app

app(prog_name="qlora4080")
