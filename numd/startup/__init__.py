"""How numd starts under twistd: the checks made before twistd forks, the way a start-up failure
reaches the terminal whole, and the start-up log that says what numd serves where."""
