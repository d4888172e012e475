from foreman.cli import main

main(prog_name="foreman")
