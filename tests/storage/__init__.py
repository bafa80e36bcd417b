"""FileStorage and SQLiteStorage tests, a package so its conftest.py has its own module name."""
