"""The add-on's user interface: settings, operators and the sidebar panel."""

from . import compare, operators, panels, preferences, properties, quantify, train

# train's, compare's and quantify's panels are sub-panels of panels' main panel, so they
# register after it.
MODULES = (preferences, properties, operators, panels, train, compare, quantify)


def register():
    for module in MODULES:
        module.register()


def unregister():
    for module in reversed(MODULES):
        module.unregister()
