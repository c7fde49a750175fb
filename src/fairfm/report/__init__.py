"""Reports: tables (terminal, Markdown, CSV) now; plots and the HTML report build on the same data."""
