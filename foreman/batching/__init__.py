"""The OpenAI Batch API's files: reading an input file into jobs
(:mod:`~foreman.batching.lines`) and writing the output and error files from
how those jobs ended (:mod:`~foreman.batching.results`)."""
