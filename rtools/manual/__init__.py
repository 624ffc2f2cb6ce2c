"""The commands' man-page text that --help does not show (FIELDS READ, OUTPUT, EXAMPLES...): one
module per command module of rtools.commands, each with its ``MAN`` dict (see rtools.manpage).
Plain text only: importing it costs nothing."""
