"""Plain handler functions behind each tab: engine calls in, views (text, tables, figures) out."""
