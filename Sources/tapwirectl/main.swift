print("tapwirectl placeholder")
