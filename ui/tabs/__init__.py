"""One module per tab: ``build()`` lays out components, ``wire(ui)`` connects their events."""
