"""The ``diffhmc`` command line: parses arguments and calls one workflow or library function
per subcommand; nothing else imports it.
"""
