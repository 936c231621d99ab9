"""The add-on's user interface: settings, operators and the sidebar panel."""

from . import compare, operators, panels, properties

# compare's panel is a sub-panel of panels' main panel, so it registers after it.
MODULES = (properties, operators, panels, compare)


def register():
    for module in MODULES:
        module.register()


def unregister():
    for module in reversed(MODULES):
        module.unregister()
