"""The dashboard's screens: runs list, run dashboard, compare, launch form, confirm, help."""
